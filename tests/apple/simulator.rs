//! The simulator itself: the example seed file, the admin API, the `apple-sim` subcommand.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use vpp_broker::apple::types::{AssetKey, UserStatus};
use vpp_broker::apple::{AppleClient, AssignmentQuery, SToken, parse_stoken};
use vpp_broker::apple_sim::{
    Dataset, NewAssignments, SeedAsset, SeedAssignment, SeedFile, SeedLocation, SettingsPatch,
    SimConfig, SimError, Simulator, TokenExpirationMode,
};

use super::support::{APP, env, raw};

fn example_seed() -> SeedFile {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/apple-sim-seed.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the example seed parses")
}

#[tokio::test]
async fn the_example_seed_file_seeds_working_locations() {
    let sim = Simulator::start(SimConfig {
        seed: Some(example_seed()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(sim.seeded().len(), 2);
    let settings = sim.settings().await.unwrap();
    assert_eq!(settings.event_delay_ms, 200, "the file's settings applied");
    let client = AppleClient::new(&sim.base_url(), Duration::from_secs(5)).unwrap();
    for location in sim.seeded() {
        // The printed sTokens are well-formed token files.
        let parsed = parse_stoken(&location.s_token).unwrap();
        assert_eq!(parsed.exp_date.to_rfc3339(), "2030-11-08T22:33:22+00:00");
        let config = client.get_client_config(&location.stoken()).await.unwrap();
        assert_eq!(
            config.location_name.as_deref(),
            Some(location.name.as_str())
        );
    }
    let springfield = &sim.seeded()[0];
    assert_eq!(
        parse_stoken(&springfield.s_token).unwrap().org_name,
        "ORG12345"
    );
    let snapshot = sim.location(&springfield.u_id).await.unwrap();
    assert_eq!(snapshot.assets.len(), 4);
    assert_eq!(snapshot.assignments.len(), 2);
    let teacher = snapshot
        .users
        .iter()
        .find(|u| u.client_user_id == "teacher-001")
        .unwrap();
    assert_eq!(teacher.status, Some(UserStatus::Associated));
    let shelbyville = client
        .get_assignments(&sim.seeded()[1].stoken(), &AssignmentQuery::default())
        .await
        .unwrap();
    assert_eq!(shelbyville.items.len(), 20);

    // The same file gives the same tokens on every start (fixed token and expDate).
    let again = Simulator::start(SimConfig {
        seed: Some(example_seed()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(again.seeded()[0].s_token, springfield.s_token);
    again.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn bad_seeds_are_refused_with_a_reason() {
    let mut over_assigned = SeedLocation {
        name: "Over".into(),
        assets: vec![SeedAsset {
            adam_id: "1".into(),
            total_count: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    over_assigned.assignments = ["A", "B"]
        .iter()
        .map(|s| SeedAssignment {
            adam_id: "1".into(),
            serial_number: Some((*s).into()),
            ..Default::default()
        })
        .collect();
    let err = Simulator::start(SimConfig {
        seed: Some(SeedFile {
            settings: None,
            locations: vec![over_assigned],
        }),
        ..SimConfig::default()
    })
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&err, SimError::Seed(m) if m.contains("fewer licenses")),
        "{err}"
    );

    let typo = serde_json::from_str::<SeedFile>(r#"{"locations": [{"name": "x", "asets": []}]}"#);
    assert!(typo.is_err(), "unknown fields are refused");
}

#[tokio::test]
async fn the_admin_api_manages_locations_tokens_assets_and_counters() {
    let env = env().await;
    let added = env
        .sim
        .add_location(&SeedLocation {
            name: "Second".into(),
            u_id: Some("555".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(added.u_id, "555");
    let duplicate = env
        .sim
        .add_location(&SeedLocation {
            name: "Again".into(),
            u_id: Some("555".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(duplicate, SimError::Admin { status: 400, .. }),
        "{duplicate}"
    );
    let missing = env.sim.location("404").await.unwrap_err();
    assert!(matches!(missing, SimError::Admin { status: 404, .. }));

    env.sim
        .add_assets(
            "555",
            &[SeedAsset {
                adam_id: APP.into(),
                total_count: 3,
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    env.sim
        .add_assignments(
            "555",
            &NewAssignments {
                assignments: vec![SeedAssignment {
                    adam_id: APP.into(),
                    serial_number: Some("X1".into()),
                    ..Default::default()
                }],
                generated_assignments: Vec::new(),
            },
        )
        .await
        .unwrap();
    let snapshot = env.sim.location("555").await.unwrap();
    assert_eq!(snapshot.assets[0].available_count, Some(2));
    assert_eq!(snapshot.assignments.len(), 1);
    assert_eq!(snapshot.tokens.len(), 1);
    assert_eq!(snapshot.tokens[0].fingerprint, added.stoken().fingerprint());
    assert_eq!(snapshot.versions.len(), 3);
    assert!(snapshot.versions.contains_key(&Dataset::Assignments));

    let client = AppleClient::new(&env.sim.base_url(), Duration::from_secs(5)).unwrap();
    let listing = client
        .get_assignments(&added.stoken(), &AssignmentQuery::default())
        .await
        .unwrap();
    assert_eq!(
        listing.items.len(),
        1,
        "each token sees its own location only"
    );
    assert_eq!(env.count("GET /assignments").await, 1);
    env.sim.reset_counters().await.unwrap();
    assert!(env.sim.counters().await.unwrap().is_empty());

    let refund = env
        .sim
        .set_asset_total("555", &AssetKey::stdq(APP), 1)
        .await
        .unwrap();
    assert_eq!(refund, -2);
    let snapshot = env.sim.location("555").await.unwrap();
    assert_eq!(
        (
            snapshot.assets[0].assigned_count,
            snapshot.assets[0].available_count
        ),
        (Some(1), Some(0))
    );

    let listed: serde_json::Value = raw()
        .get(format!("{}/locations", env.sim.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let health = raw()
        .get(format!("{}/health", env.sim.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn settings_change_behaviour_at_runtime() {
    let env = env().await;
    let settings = env
        .sim
        .update_settings(&SettingsPatch {
            token_expiration_date: Some(TokenExpirationMode::Within15Days),
            page_size: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(settings.page_size, 2);
    let config = env.client.get_client_config(&env.token).await.unwrap();
    assert_eq!(
        config.meta.token_expiration_date, None,
        "a token valid for a year is not 'expiring within 15 days'"
    );
    let soon = env
        .sim
        .add_token(
            &env.location.u_id,
            Some(chrono::Utc::now() + chrono::Duration::days(3)),
        )
        .await
        .unwrap();
    let config = env.client.get_client_config(&soon).await.unwrap();
    assert!(config.meta.token_expiration_date.is_some());

    let bad = env
        .sim
        .set_faults(&vpp_broker::apple_sim::FaultsPatch {
            error_rate: Some(2.0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(bad, SimError::Admin { status: 400, .. }));
}

#[tokio::test]
async fn the_apple_sim_subcommand_prints_working_tokens() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/apple-sim-seed.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vpp-broker"))
        .args(["apple-sim", "--port", "0", "--seed", seed])
        .env("VPP_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut base_url = None;
    let mut tokens = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut after_token_label = false;
        while let Some(line) = lines.next_line().await.unwrap() {
            let line = line.trim().to_owned();
            if let Some(url) = line.strip_prefix("client base URL:") {
                base_url = Some(url.trim().to_owned());
            } else if after_token_label {
                tokens.push(SToken::new(&line));
            }
            after_token_label = line.ends_with("sToken:");
            if tokens.len() == 2 {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the simulator printed its URL and tokens");
    let client =
        AppleClient::new(&base_url.expect("base URL printed"), Duration::from_secs(5)).unwrap();
    let config = client.get_client_config(&tokens[0]).await.unwrap();
    assert_eq!(
        config.location_name.as_deref(),
        Some("Springfield Elementary")
    );
    child.kill().await.unwrap();
}

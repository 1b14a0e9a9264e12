//! Paged reads: several pages in parallel, versionId changes, deltas, 10,000 assignments.

use std::collections::HashSet;
use std::time::Duration;

use vpp_broker::apple::types::{AssetKey, ManageAssetsRequest, PricingParam, ProductType};
use vpp_broker::apple::{AssetQuery, AssignmentQuery, ErrorClass, ErrorOrigin};
use vpp_broker::apple_sim::{
    ChurnRule, Dataset, FaultsPatch, GeneratedAssignments, SeedAsset, SimSettings,
};

use super::support::{APP, BOOK, env_with, raw, school, test_settings};

/// [`school`] with `count` device assignments of [`APP`] and a page size of 7.
async fn with_assignments(count: usize) -> super::support::Env {
    let mut location = school();
    location.assets[0].total_count = count as i64 + 10;
    location.generated_assignments = vec![GeneratedAssignments {
        adam_id: APP.into(),
        pricing_param: PricingParam::Stdq,
        count,
        serial_prefix: "SER".into(),
    }];
    env_with(
        location,
        SimSettings {
            page_size: 7,
            ..test_settings()
        },
    )
    .await
}

#[tokio::test]
async fn assignments_are_read_across_several_pages_in_parallel() {
    let env = with_assignments(50).await;
    let listing = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap();
    assert_eq!(listing.items.len(), 50);
    assert_eq!(listing.pages, 8, "ceil(50 / 7) pages");
    let serials: HashSet<_> = listing
        .items
        .iter()
        .map(|a| a.serial_number.clone().unwrap())
        .collect();
    assert_eq!(serials.len(), 50, "no page read twice, none skipped");
    assert!(serials.contains("SER000000") && serials.contains("SER000049"));
    assert_eq!(env.count("GET /assignments").await, 8);
    let snapshot = env.sim.location(&env.location.u_id).await.unwrap();
    assert_eq!(
        listing.version_id.as_deref(),
        snapshot
            .versions
            .get(&Dataset::Assignments)
            .map(String::as_str)
    );
    assert_eq!(
        listing.meta.u_id.as_deref(),
        Some(env.location.u_id.as_str())
    );
}

#[tokio::test]
async fn a_version_change_mid_traversal_restarts_from_page_zero() {
    let env = with_assignments(50).await;
    // The data changes right after page 0 is served.
    env.sim
        .set_faults(&FaultsPatch {
            version_churn: Some(ChurnRule {
                dataset: Dataset::Assignments,
                count: 1,
                location: Some(env.location.u_id.clone()),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let before =
        env.sim.location(&env.location.u_id).await.unwrap().versions[&Dataset::Assignments].clone();
    let listing = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap();
    assert_eq!(listing.items.len(), 50);
    let after =
        env.sim.location(&env.location.u_id).await.unwrap().versions[&Dataset::Assignments].clone();
    assert_ne!(before, after);
    assert_eq!(
        listing.version_id,
        Some(after),
        "the consistent second traversal"
    );
    assert_eq!(
        env.count("GET /assignments").await,
        1 + 5 + 8,
        "page 0 and the window of 5 pages that showed the change thrown away; 8 pages kept"
    );
}

#[tokio::test]
async fn endless_version_changes_end_in_a_transient_error() {
    let env = with_assignments(20).await;
    env.sim
        .set_faults(&FaultsPatch {
            version_churn: Some(ChurnRule {
                dataset: Dataset::Assignments,
                count: 1000,
                location: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.origin, ErrorOrigin::VersionChanged);
    assert_eq!(err.class(), ErrorClass::Transient { retry_after: None });
    assert!(err.to_string().contains("versionId changed"), "{err}");
    assert_eq!(
        env.count("GET /assignments").await,
        3 * 3,
        "3 traversals of 3 pages"
    );
}

#[tokio::test]
async fn incremental_reads_return_changes_since_a_version() {
    let env = with_assignments(10).await;
    let full = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap();
    let since = full.version_id.clone().unwrap();

    let event = env
        .client
        .associate(
            &env.token,
            &ManageAssetsRequest::devices(vec![AssetKey::stdq(APP)], vec!["NEW-1".into()]),
        )
        .await
        .unwrap();
    assert!(env.settle(&event.event_id).await.is_success());

    let delta = env
        .client
        .get_assignments(
            &env.token,
            &AssignmentQuery {
                since_version_id: Some(since.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(delta.items.len(), 1);
    assert_eq!(delta.items[0].serial_number.as_deref(), Some("NEW-1"));
    assert_ne!(delta.version_id.as_deref(), Some(since.as_str()));

    let nothing_new = env
        .client
        .get_assignments(
            &env.token,
            &AssignmentQuery {
                since_version_id: delta.version_id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        nothing_new.items.is_empty(),
        "zero records is a normal delta"
    );

    for bad in ["not-a-version", "00000000-0000-4000-8000-000000000001"] {
        let err = env
            .client
            .get_assignments(
                &env.token,
                &AssignmentQuery {
                    since_version_id: Some(bad.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.error_number, Some(9721));
        assert_eq!(err.class(), ErrorClass::Validation);
    }
}

#[tokio::test]
async fn assignment_filters_select_by_asset_and_target() {
    let env = with_assignments(12).await;
    let one = env
        .client
        .get_assignments(
            &env.token,
            &AssignmentQuery {
                serial_number: Some("SER000003".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    assert_eq!(one.items[0].adam_id, APP);
    let none = env
        .client
        .get_assignments(
            &env.token,
            &AssignmentQuery {
                adam_id: Some(BOOK.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(none.items.is_empty());
    assert_eq!(none.pages, 1, "an empty result is one empty page");
}

#[tokio::test]
async fn a_page_index_past_the_end_answers_9650() {
    let env = with_assignments(3).await;
    let response = raw()
        .get(format!("{}/assignments?pageIndex=5", env.sim.base_url()))
        .bearer_auth(env.token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errorNumber"], 9650);
}

#[tokio::test]
async fn assets_are_listed_with_counts_and_filters() {
    let mut location = school();
    location.assets.push(SeedAsset {
        adam_id: "111".into(),
        total_count: 0,
        unlimited: true,
        ..Default::default()
    });
    location.assets.push(SeedAsset {
        adam_id: APP.into(),
        pricing_param: PricingParam::Plus,
        total_count: 2,
        ..Default::default()
    });
    location.assignments = vec![vpp_broker::apple_sim::SeedAssignment {
        adam_id: APP.into(),
        serial_number: Some("S1".into()),
        ..Default::default()
    }];
    let env = env_with(location, test_settings()).await;

    let all = env
        .client
        .get_assets(&env.token, &AssetQuery::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 4);
    let app = all
        .items
        .iter()
        .find(|a| a.key() == AssetKey::stdq(APP))
        .unwrap();
    assert_eq!(
        (app.total_count, app.assigned_count, app.available_count),
        (Some(10), Some(1), Some(9))
    );
    assert_eq!(app.device_assignable, Some(true));
    let book = all.items.iter().find(|a| a.adam_id == BOOK).unwrap();
    assert_eq!(book.product_type, Some(ProductType::Book));
    assert_eq!(
        (book.device_assignable, book.revocable),
        (Some(false), Some(false))
    );
    assert!(all.items.iter().any(|a| a.is_unlimited()));

    let plus_only = env
        .client
        .get_assets(
            &env.token,
            &AssetQuery {
                adam_id: Some(APP.into()),
                pricing_param: Some(PricingParam::Plus),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(plus_only.items.len(), 1);
    assert_eq!(plus_only.items[0].total_count, Some(2));

    let books = env
        .client
        .get_assets(
            &env.token,
            &AssetQuery {
                product_type: Some(ProductType::Book),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(books.items.len(), 1);

    let used = env
        .client
        .get_assets(
            &env.token,
            &AssetQuery {
                min_assigned_count: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(used.items.len(), 1);

    let limited = env
        .client
        .get_assets(
            &env.token,
            &AssetQuery {
                unlimited: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(limited.items.len(), 3);
    let separate = env
        .client
        .get_assets(
            &env.token,
            &AssetQuery {
                unlimited: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let unlimited = separate.items.iter().find(|a| a.adam_id == "111").unwrap();
    assert_eq!(
        unlimited.total_count, None,
        "unlimitedAssets carry no counts"
    );
}

#[tokio::test]
async fn ten_thousand_assignments_are_read_in_twenty_paced_pages_without_a_429() {
    let mut location = school();
    location.assets[0].total_count = 10_000;
    location.generated_assignments = vec![GeneratedAssignments {
        adam_id: APP.into(),
        pricing_param: PricingParam::Stdq,
        count: 10_000,
        serial_prefix: "BENCH".into(),
    }];
    let env = env_with(location, test_settings()).await;
    // Spawned, as a dispatcher would: the client's futures are Send.
    let (client, token) = (env.client.clone(), env.token.clone());
    let listing = tokio::spawn(async move {
        client
            .get_assignments(&token, &AssignmentQuery::default())
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(listing.items.len(), 10_000);
    assert_eq!(listing.pages, 20, "500 per page");
    let distinct: HashSet<_> = listing
        .items
        .iter()
        .map(|a| a.serial_number.clone())
        .collect();
    assert_eq!(distinct.len(), 10_000);
    // The client paces itself to 15 requests per second: Apple never had to refuse one. (How
    // fast this is lives in the benchmark, `examples/apple_sim_bench.rs`.)
    assert_eq!(env.count("GET /assignments").await, 20, "no 429, no retry");
}

/// An error on a later page ends the read: the client stops asking for more pages (it never
/// hammers Apple while Apple refuses it) and returns the error.
#[tokio::test]
async fn an_error_on_a_later_page_stops_the_read() {
    let env = with_assignments(200).await;
    env.sim
        .set_faults(&FaultsPatch {
            fail_next: Some(vpp_broker::apple_sim::FailRule {
                after: 1,
                count: 1000,
                status: 503,
                error_number: 9729,
                retry_after_secs: Some(30),
                retry_after_http_date: false,
                location: None,
                endpoint: None,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = env
        .client
        .get_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Transient {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    // Page 0, then one window of at most 5 pages in parallel; not the other 23 pages.
    let requests = env.count("GET /assignments").await;
    assert!(
        (2..=6).contains(&requests),
        "{requests} requests for a 29-page read that failed at page 1"
    );
}

/// The sync's tolerant read waits out a 429 on a page and asks for that page again (a
/// Retry-After pauses the read); the ordinary read returns the error to its caller.
#[tokio::test]
async fn a_tolerant_read_pauses_on_a_429_and_asks_for_the_page_again() {
    let env = with_assignments(200).await;
    let rate_limited = |count| vpp_broker::apple_sim::FailRule {
        after: 1,
        count,
        status: 429,
        error_number: 9646,
        retry_after_secs: Some(1),
        retry_after_http_date: false,
        location: None,
        endpoint: None,
    };
    env.sim
        .set_faults(&FaultsPatch {
            fail_next: Some(rate_limited(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    let listing = env
        .client
        .read_assignments(&env.token, &AssignmentQuery::default())
        .await
        .expect("the read pauses, then goes on");
    assert_eq!(listing.items.len(), 200);
    let pages = listing.pages as u64;
    assert_eq!(
        env.count("GET /assignments").await,
        pages + 1,
        "every page once, and the refused one again"
    );
    // More refusals than the read waits out: the error comes back.
    env.sim
        .set_faults(&FaultsPatch {
            fail_next: Some(rate_limited(1000)),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = env
        .client
        .read_assignments(&env.token, &AssignmentQuery::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.class(), ErrorClass::RateLimited { .. }),
        "{err}"
    );
}

//! Fixtures shared by the test modules: a server with a simulator, a space and accounts
//! (`world`), allocation bodies, and reads of the ledger, the activity log and Apple's side.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use uuid::Uuid;
use vpp_broker::apple_sim::{SeedLocation, SimHandle};
use vpp_broker::db::schema::{activity_log, assets};

use super::TestApp;
use super::app::Options;
use super::sim;

/// The app most tests allocate (device-assignable, revocable).
pub const APP: &str = "408709785";
/// A book (user licenses only, not revocable).
pub const BOOK: &str = "377298193";

/// A simulator, a server whose Apple it is, space `acme`, and the attached accounts.
pub struct World {
    pub sim: SimHandle,
    pub app: TestApp,
    /// The accounts attached by [`world`], in the order given.
    pub accounts: Vec<Uuid>,
}

/// A simulator with `locations`; a server using it with the fast test dispatcher; space `acme`
/// with one account per `(name, u_id)` of `attach`, attached in that order.
pub async fn world(locations: Vec<SeedLocation>, attach: &[(&str, &str)]) -> World {
    world_with(locations, dispatching, attach).await
}

/// [`world`] with the server's own options, built by `options` from the simulator; their Apple
/// base URL is replaced by the simulator's. `Options::default()` runs no dispatcher (nothing
/// moves by itself); [`dispatching`] runs the fast one.
pub async fn world_with(
    locations: Vec<SeedLocation>,
    options: impl FnOnce(&SimHandle) -> Options,
    attach: &[(&str, &str)],
) -> World {
    let sim = sim::start(locations).await;
    let app = TestApp::start_opts(Options {
        apple_base_url: sim.base_url(),
        ..options(&sim)
    })
    .await;
    app.space("acme").await;
    let mut accounts = Vec::new();
    for (name, u_id) in attach {
        let account = app
            .client("acme")
            .attach(name, &sim::stoken(&sim, u_id))
            .await;
        accounts.push(account.id);
    }
    World { sim, app, accounts }
}

/// Options with the fast test dispatcher (what [`TestApp::with_sim`] runs).
pub fn dispatching(_: &SimHandle) -> Options {
    Options {
        dispatcher: Some(super::app::fast_dispatch("")),
        ..Options::default()
    }
}

/// Body of an allocation of [`APP`] for a device.
pub fn device(serial: &str) -> Value {
    json!({"asset": {"adam_id": APP}, "subject": {"kind": "device", "id": serial}})
}

/// Licenses of [`APP`] the ledger holds for `account`.
pub async fn held(app: &TestApp, account: Uuid) -> i32 {
    let mut conn = app.db.connect().await;
    assets::table
        .filter(assets::account_id.eq(account))
        .filter(assets::adam_id.eq(APP))
        .select(assets::held)
        .first(&mut conn)
        .await
        .unwrap()
}

/// Serial numbers holding an [`APP`] license at Apple's location `u_id`, sorted.
pub async fn sim_serials(sim: &SimHandle, u_id: &str) -> Vec<String> {
    let mut serials: Vec<String> = sim
        .location(u_id)
        .await
        .unwrap()
        .assignments
        .into_iter()
        .filter(|a| a.adam_id == APP)
        .filter_map(|a| a.serial_number)
        .collect();
    serials.sort();
    serials
}

/// The activity rows of one account, oldest first: (action, details).
pub async fn account_activity(app: &TestApp, account: Uuid) -> Vec<(String, Value)> {
    let mut conn = app.db.connect().await;
    activity_log::table
        .filter(activity_log::account_id.eq(account))
        .order(activity_log::id)
        .select((activity_log::action, activity_log::details))
        .load(&mut conn)
        .await
        .unwrap()
}

/// The activity rows of one assignment, oldest first: (action, actor, request id, details).
pub async fn assignment_activity(
    app: &TestApp,
    assignment: Uuid,
) -> Vec<(String, String, Option<String>, Value)> {
    let mut conn = app.db.connect().await;
    activity_log::table
        .filter(activity_log::assignment_id.eq(assignment))
        .order(activity_log::id)
        .select((
            activity_log::action,
            activity_log::actor,
            activity_log::request_id,
            activity_log::details,
        ))
        .load(&mut conn)
        .await
        .unwrap()
}

impl World {
    /// The API of space `acme`.
    pub fn api(&self) -> super::Client<'_> {
        self.app.client("acme")
    }
}

/// Waits (up to `timeout`) until no Apple work is left: no job queued, no assignment `pending`,
/// `associating` or `revoking`.
pub async fn wait_drained(
    conn: &mut diesel_async::AsyncPgConnection,
    timeout: std::time::Duration,
) {
    use vpp_broker::db::schema::{assignments, jobs};
    super::eventually_within(
        timeout,
        "drained: (queued jobs, assignments in flight) both zero",
        async || {
            let queued: i64 = jobs::table.count().get_result(conn).await.unwrap();
            let moving: i64 = assignments::table
                .filter(assignments::state.eq_any(["pending", "associating", "revoking"]))
                .count()
                .get_result(conn)
                .await
                .unwrap();
            (queued, moving)
        },
        |in_flight| *in_flight == (0, 0),
    )
    .await;
}

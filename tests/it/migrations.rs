//! Migrations are reversible, idempotent, safe to run concurrently, and the schema's
//! constraints make illegal states unrepresentable.

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use vpp_broker::db::migrate;

use crate::support::db::TestDb;

#[derive(diesel::QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    exists: bool,
}

async fn table_exists(conn: &mut AsyncPgConnection, table: &str) -> bool {
    diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS exists")
        .bind::<diesel::sql_types::Text, _>(table)
        .get_result::<Exists>(conn)
        .await
        .unwrap()
        .exists
}

const TABLES: &[&str] = &[
    "spaces",
    "accounts",
    "account_distribution_entries",
    "assets",
    "subjects",
    "distribution_policies",
    "policy_entries",
    "assignments",
    "jobs",
    "activity_log",
    "idempotency_keys",
];

#[tokio::test]
async fn migrations_go_up_down_and_up_again() {
    let db = TestDb::empty().await;
    let n = migrate::count();
    assert!(n >= 5);
    let applied = migrate::run_pending(&db.url).await.unwrap();
    assert_eq!(applied.len(), n);
    let mut conn = db.connect().await;
    for t in TABLES {
        assert!(table_exists(&mut conn, t).await, "{t} missing after up");
    }
    assert!(migrate::is_up_to_date(&mut conn).await.unwrap());
    assert!(
        migrate::run_pending(&db.url).await.unwrap().is_empty(),
        "second run is a no-op"
    );

    let reverted = migrate::revert(&db.url, n).await.unwrap();
    assert_eq!(reverted.len(), n);
    for t in TABLES {
        assert!(!table_exists(&mut conn, t).await, "{t} left after down");
    }
    assert_eq!(migrate::run_pending(&db.url).await.unwrap().len(), n);
    assert!(migrate::is_up_to_date(&mut conn).await.unwrap());
}

#[tokio::test]
async fn concurrent_migrate_runs_apply_each_migration_once() {
    let db = TestDb::empty().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            migrate::run_pending(&url).await.unwrap().len()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(
        total,
        migrate::count(),
        "each migration applied exactly once"
    );
}

/// Runs `sql` and returns the constraint error text, if any.
async fn violation(conn: &mut AsyncPgConnection, sql: &str) -> Option<String> {
    conn.batch_execute(sql).await.err().map(|e| e.to_string())
}

#[tokio::test]
async fn schema_constraints_reject_illegal_states() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    conn.batch_execute(
        "INSERT INTO spaces (id, name) VALUES ('s', 'S');
         INSERT INTO accounts (id, space_id, name, priority, location_uid, token_ciphertext,
                               token_nonce, token_key_id, token_expires_at)
         VALUES ('00000000-0000-0000-0000-000000000001', 's', 'A', 1, 'loc-1', 'x', '123456789012',
                 'k1', now() + interval '1 year');
         INSERT INTO assets (account_id, adam_id, pricing_param, apple_total)
         VALUES ('00000000-0000-0000-0000-000000000001', '408709785', 'STDQ', 10);
         INSERT INTO subjects (id, space_id, kind, external_id)
         VALUES ('00000000-0000-0000-0000-0000000000a1', 's', 'device', 'SERIAL1');
         INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                  license_type, rule, requested_by)
         VALUES (gen_random_uuid(), 's', '00000000-0000-0000-0000-000000000001', '408709785',
                 'STDQ', '00000000-0000-0000-0000-0000000000a1', 'device', 'A1', 't');",
    )
    .await
    .unwrap();

    let account = |id: &str, loc: &str, priority: i32| {
        format!(
            "INSERT INTO accounts (id, space_id, name, priority, location_uid, token_ciphertext,
                                   token_nonce, token_key_id, token_expires_at)
             VALUES ('{id}', 's', 'B', {priority}, '{loc}', 'x', '123456789012', 'k1', now())"
        )
    };
    // One Apple location per deployment.
    let e = violation(
        &mut conn,
        &account("00000000-0000-0000-0000-000000000002", "loc-1", 2),
    )
    .await;
    assert!(e.unwrap().contains("accounts_location_unique"));
    // Priorities unique per space.
    let e = violation(
        &mut conn,
        &account("00000000-0000-0000-0000-000000000003", "loc-3", 1),
    )
    .await;
    assert!(e.unwrap().contains("accounts_priority_unique"));
    // ... but a transaction may permute them (deferrable constraint).
    conn.batch_execute(&account("00000000-0000-0000-0000-000000000004", "loc-4", 2))
        .await
        .unwrap();
    conn.batch_execute(
        "BEGIN; SET CONSTRAINTS accounts_priority_unique DEFERRED;
         UPDATE accounts SET priority = 2 WHERE id = '00000000-0000-0000-0000-000000000001';
         UPDATE accounts SET priority = 1 WHERE id = '00000000-0000-0000-0000-000000000004';
         COMMIT;",
    )
    .await
    .unwrap();

    let live = "INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param,
                    subject_id, license_type, rule, requested_by, state)
                VALUES (gen_random_uuid(), 's', '00000000-0000-0000-0000-000000000001',
                    '408709785', 'STDQ', '00000000-0000-0000-0000-0000000000a1', 'device', 'A1',
                    't', 'STATE')";
    // One live assignment per space, asset and subject ...
    let e = violation(&mut conn, &live.replace("STATE", "active")).await;
    assert!(e.unwrap().contains("assignments_one_live"));
    // ... while finished ones may pile up as history.
    conn.batch_execute(&live.replace("STATE", "revoked"))
        .await
        .unwrap();
    conn.batch_execute(&live.replace("STATE", "failed"))
        .await
        .unwrap();
    // Unknown states, negative counts and bad ids are refused.
    assert!(
        violation(&mut conn, &live.replace("STATE", "lost"))
            .await
            .is_some()
    );
    assert!(
        violation(&mut conn, "UPDATE assets SET held = -1")
            .await
            .is_some()
    );
    assert!(
        violation(
            &mut conn,
            "INSERT INTO spaces (id, name) VALUES ('Bad Id', 'x')"
        )
        .await
        .is_some()
    );
    assert!(violation(&mut conn, "INSERT INTO assets (account_id, adam_id, pricing_param) VALUES ('00000000-0000-0000-0000-000000000001', 'abc', 'STDQ')").await.is_some());
    // A subject appears in at most one mode per policy.
    conn.batch_execute(
        "INSERT INTO distribution_policies (id, space_id, adam_id, pricing_param)
         VALUES ('00000000-0000-0000-0000-0000000000b1', 's', '408709785', 'STDQ');
         INSERT INTO policy_entries (policy_id, target_kind, target, mode)
         VALUES ('00000000-0000-0000-0000-0000000000b1', 'device', 'SERIAL1', 'reserved');",
    )
    .await
    .unwrap();
    let e = violation(
        &mut conn,
        "INSERT INTO policy_entries (policy_id, target_kind, target, mode)
         VALUES ('00000000-0000-0000-0000-0000000000b1', 'device', 'SERIAL1', 'disallowed')",
    )
    .await;
    assert!(e.unwrap().contains("policy_entries_pkey"));
}

/// Lock strength: rows that reference an account or a space (jobs, Apple events, assignments)
/// take `FOR KEY SHARE` on it while they are inserted. Renumbering priorities and the row
/// locks writers of accounts and spaces take must not wait for those, or allocations, the
/// dispatcher and reorders deadlock one another.
#[tokio::test]
async fn reorders_and_account_locks_do_not_wait_for_rows_referencing_the_account() {
    let db = TestDb::new().await;
    let mut setup = db.connect().await;
    setup
        .batch_execute(
            "INSERT INTO spaces (id, name) VALUES ('s', 'S');
             INSERT INTO accounts (id, space_id, name, priority, location_uid, token_ciphertext,
                                   token_nonce, token_key_id, token_expires_at)
             VALUES ('00000000-0000-0000-0000-000000000001', 's', 'A', 1, 'loc-1', 'x',
                     '123456789012', 'k1', now() + interval '1 year'),
                    ('00000000-0000-0000-0000-000000000002', 's', 'B', 2, 'loc-2', 'x',
                     '123456789012', 'k1', now() + interval '1 year');",
        )
        .await
        .unwrap();
    // An open transaction holds a job of account A (its key-share lock on A's row).
    let mut holder = db.connect().await;
    holder
        .batch_execute(
            "BEGIN; INSERT INTO jobs (kind, account_id)
                    VALUES ('associate', '00000000-0000-0000-0000-000000000001');",
        )
        .await
        .unwrap();
    let mut conn = db.connect().await;
    conn.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    diesel_async::AsyncConnection::transaction(&mut conn, async |c| {
        let a: uuid::Uuid = "00000000-0000-0000-0000-000000000001".parse().unwrap();
        let b: uuid::Uuid = "00000000-0000-0000-0000-000000000002".parse().unwrap();
        vpp_broker::ledger::accounts::lock_space(c, "s").await?;
        vpp_broker::ledger::accounts::find_locked(c, "s", a).await?;
        vpp_broker::ledger::accounts::write_order(c, &[b, a]).await?;
        Ok::<_, diesel::result::Error>(())
    })
    .await
    .expect("no lock waits for the key-share holder");
    holder.batch_execute("COMMIT").await.unwrap();
    let order: Vec<String> = diesel::sql_query("SELECT name FROM accounts ORDER BY priority")
        .load::<Name>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(order, ["B", "A"]);
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

//! Writing a batch's new licenses in one statement: the pool update (`held`), the assignments,
//! their Apple jobs and the activity rows. A license that serves a waiting assignment (A12) is
//! written onto that row (`waiting` → `pending`, out of the line) instead of a new one; the
//! waiting row must still be waiting and belong to the decided holder (the wait-list refuses
//! a re-decision whose holder changed before it gets here: [`crate::domain::allocation::Refusal::HolderChanged`]),
//! else the statement comes up short like an overdrawn pool and the batch is decided again.
//!
//! The pool update carries its own guard (`held + foreign_assigned <= apple_total` after the
//! update, and the account not marked for deletion): should the in-memory decision ever disagree with the
//! ledger, the statement reports fewer accounts updated than planned and the caller rolls the
//! batch back and decides again. Over-allocation is refused by the database, not only by the
//! decision.
//!
//! The deletion check closes a race the row locks alone leave open: the batch read the
//! account's `delete_requested_at` without locking the account row. A deletion waits for the
//! account's asset rows (which the batch holds) before it revokes, so it sees every license
//! written before; a batch that writes after the deletion committed (this statement reads
//! afresh) finds the mark and decides again, skipping the account.

use std::sync::LazyLock;

use crate::db::prepared::Prepare;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::decide::Planned;
use crate::domain::records::AssignmentRow;
use crate::ledger::jobs::JobKind;

/// Who asked, why and in which request, per planned license.
pub struct Requested<'a> {
    pub requested_by: &'a str,
    pub reason: &'a str,
    pub request_id: Option<&'a str>,
    /// A12: the license is written onto this waiting assignment (`Planned::id`), which
    /// leaves the line and becomes `pending`, instead of onto a new assignment.
    pub serves_waiting: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error("the pool update found fewer free licenses than decided; the batch is rolled back")]
    Overdrawn,
}

/// What [`write()`] returns of the rows it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returning {
    /// Every new row in full (an allocation's answer shows it).
    Rows,
    /// Only how many: bulk operations and the wait-list count outcomes and show no row, and
    /// sending 10,000 full rows back (each with its decision's JSON) and decoding them cost
    /// as much as a third of writing them.
    Count,
}

/// Writes `planned` (with who asked for each) and returns the new rows, in no particular order
/// (none with [`Returning::Count`]).
pub async fn write(
    conn: &mut AsyncPgConnection,
    space: &str,
    planned: &[(&Planned, Requested<'_>)],
    returning: Returning,
) -> Result<Vec<AssignmentRow>, WriteError> {
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<serde_json::Value> = planned
        .iter()
        .map(|(p, o)| {
            serde_json::json!({
                "id": p.id,
                "account_id": p.account_id,
                "adam_id": p.asset.adam_id,
                "pricing_param": p.asset.pricing_param,
                "subject_id": p.holder.id,
                "license_type": p.license_type,
                "rule": p.rule,
                "decision": p.decision,
                "requested_by": o.requested_by,
                "reason": o.reason,
                "request_id": o.request_id,
                "at_apple": p.at_apple,
                "promote": o.serves_waiting,
                "subject_label": format!("{}:{}", p.holder.kind, p.holder.external_id),
                "details": {
                    "license_type": p.license_type,
                    "already_at_apple": p.at_apple,
                    "skipped": p.decision.skipped.len(),
                    "queued_because": p.decision.queued_because,
                    "served_from_wait_list": o.serves_waiting,
                },
            })
        })
        .collect();
    let groups = {
        let mut set: Vec<(uuid::Uuid, &str, &str)> = planned
            .iter()
            .map(|(p, _)| {
                (
                    p.account_id,
                    p.asset.adam_id.as_str(),
                    p.asset.pricing_param.as_str(),
                )
            })
            .collect();
        set.sort();
        set.dedup();
        set.len() as i64
    };
    // One statement. If the guarded pool update touched fewer rows than planned, the final
    // SELECT returns nothing and the caller rolls the transaction back, inserts included.
    let query: &str = match returning {
        Returning::Rows => &WRITE_ROWS,
        Returning::Count => &WRITE_COUNT,
    };
    let inserted: Vec<AssignmentRow> = match returning {
        Returning::Rows => {
            diesel::sql_query(query)
                .bind::<diesel::sql_types::Jsonb, _>(serde_json::Value::Array(rows))
                .bind::<diesel::sql_types::Text, _>(space)
                .bind::<diesel::sql_types::BigInt, _>(groups)
                .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
                .prepared()
                .load(conn)
                .await?
        }
        Returning::Count => {
            let ids: Vec<Written> = diesel::sql_query(query)
                .bind::<diesel::sql_types::Jsonb, _>(serde_json::Value::Array(rows))
                .bind::<diesel::sql_types::Text, _>(space)
                .bind::<diesel::sql_types::BigInt, _>(groups)
                .bind::<diesel::sql_types::Text, _>(JobKind::Associate)
                .prepared()
                .load(conn)
                .await?;
            if ids.len() != planned.len() {
                return Err(WriteError::Overdrawn);
            }
            return Ok(Vec::new());
        }
    };
    if inserted.len() != planned.len() {
        return Err(WriteError::Overdrawn);
    }
    Ok(inserted)
}

/// The write's statement; [`Returning`] fills in what the new rows answer.
const WRITE: &str = "WITH new AS (
             SELECT * FROM jsonb_to_recordset($1) AS t(
                 id uuid, account_id uuid, adam_id text, pricing_param text, subject_id uuid,
                 license_type text, rule text, decision jsonb, requested_by text, reason text,
                 request_id text, at_apple bool, promote bool, subject_label text,
                 details jsonb)
         ), counts AS (
             SELECT account_id, adam_id, pricing_param, count(*) AS n,
                    count(*) FILTER (WHERE at_apple) AS moved
               FROM new
              GROUP BY account_id, adam_id, pricing_param
         ), bump AS (
             UPDATE assets s SET held = s.held + c.n,
                                 foreign_assigned = s.foreign_assigned - c.moved,
                                 updated_at = now()
               FROM counts c
              WHERE s.account_id = c.account_id AND s.adam_id = c.adam_id
                AND s.pricing_param = c.pricing_param
                AND s.foreign_assigned >= c.moved
                -- Licenses moved from `foreign_assigned` to `held` use nothing new: a batch of
                -- only such moves passes even on an asset Apple over-committed (a refund).
                AND (s.held + s.foreign_assigned + c.n - c.moved <= s.apple_total OR c.n = c.moved)
                AND NOT EXISTS (SELECT 1 FROM accounts a
                                 WHERE a.id = s.account_id AND a.delete_requested_at IS NOT NULL)
          RETURNING 1
         ), ins AS (
             INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                      license_type, state, rule, decision, requested_by, reason)
             SELECT id, $2, account_id, adam_id, pricing_param, subject_id, license_type, 'pending',
                    rule, decision, requested_by, reason
               FROM new WHERE NOT promote
          RETURNING {INS}
         ), served AS (
             -- A12: a waiting assignment served: same row, now holding the license.
             UPDATE assignments a
                SET state = 'pending', account_id = n.account_id, license_type = n.license_type,
                    rule = n.rule, decision = n.decision, version = a.version + 1,
                    updated_at = now()
               FROM new n
              WHERE n.promote AND a.id = n.id AND a.state = 'waiting'
                -- Only for the holder the row was written for (the wait-list checks it first).
                AND a.subject_id = n.subject_id
          RETURNING {SERVED}
         ), unlined AS (
             DELETE FROM waitlist WHERE assignment_id IN (SELECT id FROM served)
         ), job AS (
             INSERT INTO jobs (kind, account_id, assignment_id, adam_id, pricing_param, license_type)
             SELECT $4::text, account_id, id, adam_id, pricing_param, license_type FROM new
         ), act AS (
             INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, subject,
                                       adam_id, pricing_param, rule, request_id, details,
                                       version)
             SELECT $2, n.requested_by, 'assignment.allocated', n.account_id, n.id,
                    n.subject_label, n.adam_id, n.pricing_param, n.rule, n.request_id, n.details,
                    v.version
               FROM new n
               -- The version the allocation gave the row (events carry it).
               JOIN (SELECT id, version FROM ins UNION ALL SELECT id, version FROM served) v
                 ON v.id = n.id
         )
         SELECT {OUT} FROM (SELECT * FROM ins UNION ALL SELECT * FROM served) x
          WHERE (SELECT count(*) FROM bump) = $3";

/// The write, answering the new rows in full.
static WRITE_ROWS: LazyLock<String> = LazyLock::new(|| {
    WRITE
        .replace(
            "{INS}",
            "id, space_id, account_id, adam_id, pricing_param, subject_id, license_type, state,
             rule, decision, requested_by, reason, apple_event_id, batch_id, error, version,
             created_at, updated_at, revoked_by, revocation_reason, revocation_requested_at,
             revocation_request_id",
        )
        .replace(
            "{SERVED}",
            "a.id, a.space_id, a.account_id, a.adam_id, a.pricing_param, a.subject_id,
             a.license_type, a.state, a.rule, a.decision, a.requested_by, a.reason,
             a.apple_event_id, a.batch_id, a.error, a.version, a.created_at, a.updated_at,
             a.revoked_by, a.revocation_reason, a.revocation_requested_at,
             a.revocation_request_id",
        )
        .replace("{OUT}", "x.*")
});

/// The same write, answering only the new rows' ids (and the versions the activity rows
/// record).
static WRITE_COUNT: LazyLock<String> = LazyLock::new(|| {
    WRITE
        .replace("{INS}", "id, version")
        .replace("{SERVED}", "a.id, a.version")
        .replace("{OUT}", "x.id")
});

#[derive(diesel::QueryableByName)]
struct Written {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    #[allow(dead_code)]
    id: uuid::Uuid,
}

//! Reading what a batch of allocations needs, in a fixed number of queries whatever the batch
//! size: the subjects (created or updated as the caller describes them), their live
//! assignments, the assets' policies and outstanding reservations, the accounts that own the
//! assets (with their asset rows **locked**), which distribution-list entries match the
//! subjects, which of the subjects Apple already lists for the assets (the sync's mirror:
//! the double count of issue 13), and how many wait in line for each asset (A12).
//!
//! Lock order, which keeps concurrent batches (in any replica) free of deadlocks: subject rows
//! first (upserted in sorted order), then asset rows (locked in `(account, adam_id, pricing)`
//! order). Holding the asset rows makes the batch's in-memory counts exact until it commits.

use crate::db::prepared::Prepare;
use std::collections::{HashMap, HashSet};

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::allocation::{AllocationRequest, AssetRef, SubjectInput};
use crate::domain::model::{LicenseType, SubjectKind};
use crate::domain::records::{AssignmentRow, EntryRow, SubjectRow};
use crate::domain::snapshot::{Candidate, Snapshot};

/// The subject facts a batch carries, deduplicated and sorted (the lock order).
struct Facts {
    kind: SubjectKind,
    external_id: String,
    groups: Option<Vec<String>>,
    user_external_id: Option<String>,
    shared_ipad: Option<bool>,
}

fn facts(reqs: &[&AllocationRequest]) -> Vec<Facts> {
    let mut map: std::collections::BTreeMap<(SubjectKind, String), Facts> = Default::default();
    let mut put = |f: Facts| {
        let key = (f.kind, f.external_id.clone());
        match map.get_mut(&key) {
            Some(existing) => {
                if f.groups.is_some() {
                    existing.groups = f.groups;
                }
                if f.user_external_id.is_some() {
                    existing.user_external_id = f.user_external_id;
                }
                if f.shared_ipad.is_some() {
                    existing.shared_ipad = f.shared_ipad;
                }
            }
            None => {
                map.insert(key, f);
            }
        }
    };
    for r in reqs {
        match &r.subject {
            SubjectInput::User { id, groups } => put(Facts {
                kind: SubjectKind::User,
                external_id: id.clone(),
                groups: groups.clone(),
                user_external_id: None,
                shared_ipad: None,
            }),
            SubjectInput::Device {
                serial,
                user,
                shared_ipad,
                groups,
            } => {
                put(Facts {
                    kind: SubjectKind::Device,
                    external_id: serial.clone(),
                    groups: groups.clone(),
                    user_external_id: user.clone(),
                    shared_ipad: *shared_ipad,
                });
                if let Some(u) = user {
                    put(Facts {
                        kind: SubjectKind::User,
                        external_id: u.clone(),
                        groups: None,
                        user_external_id: None,
                        shared_ipad: None,
                    });
                }
            }
        }
    }
    map.into_values().collect()
}

/// Creates or updates the batch's subjects (or, `read_only` for a dry run or the wait-list's
/// re-decisions, only reads them and stands in for unknown ones) and returns them.
async fn subjects(
    conn: &mut AsyncPgConnection,
    space: &str,
    facts: &[Facts],
    read_only: bool,
) -> diesel::QueryResult<HashMap<(SubjectKind, String), SubjectRow>> {
    let rows: Vec<serde_json::Value> = facts
        .iter()
        .map(|f| {
            serde_json::json!({
                "id": Uuid::now_v7(),
                "kind": f.kind,
                "external_id": f.external_id,
                "has_groups": f.groups.is_some(),
                "groups": f.groups.clone().unwrap_or_default(),
                "user_external_id": f.user_external_id,
                "shared_ipad": f.shared_ipad,
            })
        })
        .collect();
    let sql = if read_only {
        "SELECT COALESCE(s.id, '00000000-0000-0000-0000-000000000000'::uuid) AS id, $2 AS space_id,
                t.kind, t.external_id,
                CASE WHEN t.has_groups THEN t.groups ELSE COALESCE(s.groups, '{}') END AS groups,
                COALESCE(t.user_external_id, s.user_external_id) AS user_external_id,
                COALESCE(t.shared_ipad, s.shared_ipad, false) AS shared_ipad
           FROM jsonb_to_recordset($1) AS t(id uuid, kind text, external_id text, has_groups bool,
                                            groups text[], user_external_id text, shared_ipad bool)
           LEFT JOIN subjects s ON s.space_id = $2 AND s.kind = t.kind AND s.external_id = t.external_id"
    } else {
        "WITH t AS (
             SELECT * FROM jsonb_to_recordset($1) AS t(id uuid, kind text, external_id text,
                 has_groups bool, groups text[], user_external_id text, shared_ipad bool)
         )
         INSERT INTO subjects AS s (id, space_id, kind, external_id, groups, user_external_id, shared_ipad)
         SELECT t.id, $2, t.kind, t.external_id, t.groups, t.user_external_id,
                COALESCE(t.shared_ipad, false)
           FROM t ORDER BY t.kind, t.external_id
         ON CONFLICT (space_id, kind, external_id) DO UPDATE SET
             groups = CASE WHEN (SELECT t.has_groups FROM t
                                  WHERE t.kind = s.kind AND t.external_id = s.external_id)
                           THEN EXCLUDED.groups ELSE s.groups END,
             user_external_id = COALESCE(EXCLUDED.user_external_id, s.user_external_id),
             shared_ipad = CASE WHEN (SELECT t.shared_ipad IS NOT NULL FROM t
                                       WHERE t.kind = s.kind AND t.external_id = s.external_id)
                                THEN EXCLUDED.shared_ipad ELSE s.shared_ipad END
         RETURNING s.id, s.space_id, s.kind, s.external_id, s.groups, s.user_external_id, s.shared_ipad"
    };
    let found: Vec<SubjectRow> = diesel::sql_query(sql)
        .bind::<diesel::sql_types::Jsonb, _>(serde_json::Value::Array(rows))
        .bind::<diesel::sql_types::Text, _>(space)
        .prepared()
        .load(conn)
        .await?;
    Ok(found
        .into_iter()
        .map(|s| ((s.kind, s.external_id.clone()), s))
        .collect())
}

/// Whether the space exists (checked once per batch; its row is share-locked against deletion
/// until the batch commits).
pub async fn space_exists(conn: &mut AsyncPgConnection, space: &str) -> diesel::QueryResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct One {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        _one: i32,
    }
    let found: Vec<One> =
        diesel::sql_query("SELECT 1 AS _one FROM spaces WHERE id = $1 FOR KEY SHARE")
            .bind::<diesel::sql_types::Text, _>(space)
            .prepared()
            .load(conn)
            .await?;
    Ok(!found.is_empty())
}

/// One entry of a policy of the batch's assets; a policy without entries comes as one row
/// with no entry (it still exists: see `new_assets_for_everyone`).
#[derive(diesel::QueryableByName)]
struct PolicyEntry {
    #[diesel(sql_type = diesel::sql_types::Text)]
    adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pricing_param: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    policy_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    wait_for_license: bool,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    target_kind: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    target: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    mode: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    account_id: Option<Uuid>,
    /// For reservations: the subject already holds a live license for the asset.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    served: bool,
}

/// A license Apple lists (the sync's mirror) for one of the batch's subjects and assets.
#[derive(diesel::QueryableByName)]
struct Mirrored {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    account_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    adam_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pricing_param: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    license_type: LicenseType,
    #[diesel(sql_type = diesel::sql_types::Text)]
    target: String,
}

#[derive(diesel::QueryableByName)]
struct Listed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    account_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

/// Loads everything the batch's decisions read. Without `dry_run` the subjects are written and
/// the asset rows locked until the caller's transaction ends.
pub async fn snapshot(
    conn: &mut AsyncPgConnection,
    space: &str,
    reqs: &[&AllocationRequest],
    dry_run: bool,
) -> diesel::QueryResult<Snapshot> {
    // The wait-list's re-decisions (A12) change no subject: they only read the stored facts
    // (and lock no subject row: their entries' assignment rows are locked first).
    let read_only = dry_run || reqs.iter().all(|r| r.serves.is_some());
    let mut snap = Snapshot {
        subjects: subjects(conn, space, &facts(reqs), read_only).await?,
        ..Snapshot::default()
    };
    // A device's user stored by an earlier request (this one gave only the serial) decides
    // A6/A7 and user-based licenses too. Its row was written with the device's, so this
    // statement normally only reads; it runs only when such a user is missing.
    let stored_users: Vec<Facts> = snap
        .subjects
        .values()
        .filter_map(|s| s.user_external_id.as_ref())
        .filter(|u| {
            !snap
                .subjects
                .contains_key(&(SubjectKind::User, (*u).clone()))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|u| Facts {
            kind: SubjectKind::User,
            external_id: u.clone(),
            groups: None,
            user_external_id: None,
            shared_ipad: None,
        })
        .collect();
    if !stored_users.is_empty() {
        let users = subjects(conn, space, &stored_users, read_only).await?;
        snap.subjects.extend(users);
    }
    let assets: Vec<AssetRef> = {
        let set: HashSet<AssetRef> = reqs.iter().map(|r| r.asset.clone()).collect();
        let mut v: Vec<AssetRef> = set.into_iter().collect();
        v.sort_by(|a, b| (&a.adam_id, &a.pricing_param).cmp(&(&b.adam_id, &b.pricing_param)));
        v
    };
    let adams: Vec<&str> = assets.iter().map(|a| a.adam_id.as_str()).collect();
    let pricings: Vec<&str> = assets.iter().map(|a| a.pricing_param.as_str()).collect();
    let subject_ids: Vec<Uuid> = snap
        .subjects
        .values()
        .map(|s| s.id)
        .filter(|id| !id.is_nil())
        .collect();

    let external_ids = |kind: SubjectKind| -> Vec<&str> {
        snap.subjects
            .values()
            .filter(|s| s.kind == kind)
            .map(|s| s.external_id.as_str())
            .collect()
    };
    let serials = external_ids(SubjectKind::Device);
    let users = external_ids(SubjectKind::User);
    let groups: Vec<String> = snap
        .subjects
        .values()
        .flat_map(|s| s.group_names())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();

    // The five reads are independent: they go out together, pipelined on the connection
    // (PostgreSQL runs them one after the other; the batch waits one round trip, not five).
    let shared: &AsyncPgConnection = conn;
    // Subjects belong to one space, so their ids alone select the space's assignments. The
    // live-state filter is applied below, not in SQL: with it, a planner working from stale
    // statistics (a fresh or fast-growing ledger) walks the whole partial index of live
    // assignments instead of probing the subject index.
    let existing_q = diesel::sql_query(
        "SELECT id, space_id, account_id, adam_id, pricing_param, subject_id, license_type, state,
                rule, decision, requested_by, reason, apple_event_id, batch_id, error, version,
                created_at, updated_at, revoked_by, revocation_reason, revocation_requested_at,
                revocation_request_id
           FROM assignments
          WHERE subject_id = ANY($1) AND adam_id = ANY($2)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&subject_ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&adams);
    let policies_q = diesel::sql_query(
        "SELECT p.adam_id, p.pricing_param, p.id AS policy_id, p.wait_for_license,
                e.target_kind, e.target, e.mode, e.account_id,
                COALESCE(e.mode = 'reserved' AND EXISTS (
                    SELECT 1 FROM subjects s JOIN assignments a ON a.subject_id = s.id
                     WHERE s.space_id = p.space_id AND s.kind = e.target_kind AND s.external_id = e.target
                       AND a.adam_id = p.adam_id AND a.pricing_param = p.pricing_param
                       AND a.state IN ('pending', 'associating', 'active')), false) AS served
           FROM distribution_policies p
           LEFT JOIN policy_entries e ON e.policy_id = p.id
           JOIN unnest($2::text[], $3::text[]) AS want(adam_id, pricing_param)
             ON want.adam_id = p.adam_id AND want.pricing_param = p.pricing_param
          WHERE p.space_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&adams)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&pricings);
    let lock = if dry_run { "" } else { "FOR UPDATE OF s" };
    let candidates_q = diesel::sql_query(format!(
        "SELECT a.id, a.name, a.priority, a.status, a.status_reason, a.throttled_until,
                a.token_expires_at, a.when_unusable, a.delete_requested_at IS NOT NULL AS deleting,
                a.new_assets_for_everyone,
                s.adam_id, s.pricing_param, s.apple_total, s.foreign_assigned, s.held,
                s.device_assignable,
                EXISTS (SELECT 1 FROM account_distribution_entries d WHERE d.account_id = a.id) AS has_list
           FROM accounts a
           JOIN assets s ON s.account_id = a.id
           JOIN unnest($2::text[], $3::text[]) AS want(adam_id, pricing_param)
             ON want.adam_id = s.adam_id AND want.pricing_param = s.pricing_param
          WHERE a.space_id = $1
          ORDER BY s.account_id, s.adam_id, s.pricing_param
          {lock}"
    ))
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&adams)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&pricings);
    let listed_q = diesel::sql_query(
        "SELECT d.account_id, d.kind, d.value
           FROM account_distribution_entries d
           JOIN accounts a ON a.id = d.account_id
          WHERE a.space_id = $1
            AND EXISTS (SELECT 1 FROM assets s
                          JOIN unnest($2::text[], $3::text[]) AS want(adam_id, pricing_param)
                            ON want.adam_id = s.adam_id AND want.pricing_param = s.pricing_param
                         WHERE s.account_id = a.id)
            AND ((d.kind = 'device' AND d.value = ANY($4)) OR (d.kind = 'user' AND d.value = ANY($5))
              OR (d.kind = 'group' AND d.value = ANY($6)))",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&adams)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&pricings)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&serials)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&users)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&groups);
    // The double count (issue 13): which of the batch's subjects Apple already lists for the
    // batch's assets, per account of the space: one probe of `apple_assignments_by_target`
    // (account, license type, target) per account and subject; empty until a sync ran. (A
    // filter `(type = 'device' AND target = ANY(…)) OR (type = 'user' AND …)` instead defeats
    // the index: PostgreSQL scanned the whole table, 690 ms at 1.8 M rows.)
    let (probe_types, probe_targets): (Vec<&str>, Vec<&str>) = serials
        .iter()
        .map(|s| ("device", *s))
        .chain(users.iter().map(|u| ("user", *u)))
        .unzip();
    let mirrored_q = diesel::sql_query(
        "SELECT m.account_id, m.adam_id, m.pricing_param, m.license_type, m.target
           FROM accounts a
          CROSS JOIN unnest($4::text[], $5::text[]) AS t(license_type, target)
           JOIN apple_assignments m ON m.account_id = a.id AND m.license_type = t.license_type
                                   AND m.target = t.target
          WHERE a.space_id = $1
            AND (m.adam_id, m.pricing_param) IN (SELECT * FROM unnest($2::text[], $3::text[]))
            -- A license the subject's own assignment is releasing is not already at Apple:
            -- `foreign_assigned` never counted it (the same test as the sync's recount).
            AND NOT EXISTS (
                SELECT 1 FROM assignments x JOIN subjects s ON s.id = x.subject_id
                 WHERE x.account_id = m.account_id AND x.adam_id = m.adam_id
                   AND x.pricing_param = m.pricing_param AND x.license_type = m.license_type
                   AND s.space_id = $1 AND s.kind = m.license_type AND s.external_id = m.target
                   AND x.state IN ('pending', 'associating', 'active', 'revoking'))",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&adams)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&pricings)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&probe_types)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&probe_targets);
    // A12: the length of each asset's line; the wait-list's own runs need none (they are the
    // line), so they ask for no asset.
    let (line_adams, line_pricings): (Vec<&str>, Vec<&str>) = if read_only {
        (Vec::new(), Vec::new())
    } else {
        (adams.clone(), pricings.clone())
    };
    let lines_q = diesel::sql_query(
        "SELECT w.adam_id, w.pricing_param, count(*) AS waiting FROM waitlist w
           JOIN unnest($2::text[], $3::text[]) AS want(adam_id, pricing_param)
             ON want.adam_id = w.adam_id AND want.pricing_param = w.pricing_param
          WHERE w.space_id = $1
          GROUP BY w.adam_id, w.pricing_param",
    )
    .bind::<diesel::sql_types::Text, _>(space)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&line_adams)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&line_pricings);
    let (existing, entries, candidates, listed, mirrored, lines) = futures_util::try_join!(
        existing_q.prepared().load::<AssignmentRow>(&mut &*shared),
        policies_q.prepared().load::<PolicyEntry>(&mut &*shared),
        candidates_q.prepared().load::<Candidate>(&mut &*shared),
        listed_q.prepared().load::<Listed>(&mut &*shared),
        mirrored_q.prepared().load::<Mirrored>(&mut &*shared),
        lines_q
            .prepared()
            .load::<crate::ledger::waitlist::WaitingCount>(&mut &*shared),
    )?;
    snap.lines = lines
        .into_iter()
        .map(|l| {
            (
                AssetRef {
                    adam_id: l.adam_id,
                    pricing_param: l.pricing_param,
                },
                l.waiting,
            )
        })
        .collect();
    snap.at_apple = mirrored
        .into_iter()
        .map(|m| {
            (
                m.account_id,
                AssetRef {
                    adam_id: m.adam_id,
                    pricing_param: m.pricing_param,
                },
                m.license_type,
                m.target,
            )
        })
        .collect();

    for a in existing {
        if a.space_id != space {
            continue;
        }
        if a.state.is_live() {
            snap.existing.push(a);
        } else if a.state == crate::domain::model::AssignmentState::Waiting {
            let asset = AssetRef {
                adam_id: a.adam_id.clone(),
                pricing_param: a.pricing_param.clone(),
            };
            snap.waiting.insert((a.subject_id, asset), a);
        }
    }
    for e in entries {
        let asset = AssetRef {
            adam_id: e.adam_id,
            pricing_param: e.pricing_param,
        };
        let policy = snap.policies.entry(asset.clone()).or_default();
        policy.wait_for_license = e.wait_for_license;
        let (Some(target_kind), Some(target), Some(mode)) = (e.target_kind, e.target, e.mode)
        else {
            continue;
        };
        policy.entries.push(EntryRow {
            policy_id: e.policy_id,
            target_kind,
            target,
            mode: mode.clone(),
            account_id: e.account_id,
        });
        if mode == "reserved" && !e.served {
            *snap
                .outstanding
                .entry(asset.clone())
                .or_default()
                .entry(e.account_id)
                .or_default() += 1;
        }
    }
    for c in candidates {
        snap.candidates
            .entry(AssetRef {
                adam_id: c.adam_id.clone(),
                pricing_param: c.pricing_param.clone(),
            })
            .or_default()
            .push(c);
    }
    for list in snap.candidates.values_mut() {
        list.sort_by_key(|c| c.priority);
    }
    snap.listed = listed
        .into_iter()
        .map(|r| (r.account_id, r.kind, r.value))
        .collect();
    Ok(snap)
}

//! Applying what a sync read (docs/sync.md, Applying), in three transactions:
//!
//! 1. the mirror: rows Apple newly lists are inserted, and a complete full read deletes
//!    the account's rows it did not see;
//! 2. a short one: the asset rows are compared with the read unlocked; only those it changes
//!    and those recounted are locked (in key order) and written — Apple's counts, new assets
//!    inserted (`asset.appeared`), assets Apple no longer lists zeroed (`asset.vanished`),
//!    `foreign_assigned` recounted from the mirror —, then users' statuses, the versionIds,
//!    the sync times and, after a stable full read, `asset_list_reads` (the counts of the
//!    rows not rewritten are confirmed as of then);
//! 3. without the asset rows' locks: the drift report, and the run's end (`sync.finished`; the
//!    job goes).
//!
//! Each transaction first checks (row lock) that this worker still holds the job: a worker
//! whose lease another one took over applies nothing. All are idempotent, so a run restarted
//! after a crash between them applies the same read again without counting anything twice.

use std::collections::HashMap;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;

use super::read::Read;
use super::{Settings, SyncError};
use crate::domain::origin::Origin;
use crate::domain::reconciliation::SyncState;
use crate::ledger::activity::{self, Activity};
use crate::ledger::apple_mirror::{self as mirror, Synced};
use crate::ledger::drift_scope::{self, AssetKeys};
use crate::ledger::sync_runs::{self, Claimed, Finish, Progress, SyncRunRow};

/// Applies `read` for the claimed run; `None` when this worker no longer holds the job.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    claimed: &Claimed,
    worker: &str,
    read: &Read,
    settings: &Settings,
) -> Result<Option<SyncRunRow>, SyncError> {
    let run = &claimed.run;
    let account = run.account_id;
    let complete = read.complete();
    let applying = chrono::Utc::now();
    let mirrored = conn
        .transaction(async |conn| {
            if !sync_runs::still_held(conn, claimed.job_id, worker).await? {
                return Ok::<_, diesel::result::Error>(None);
            }
            let (inserted, deleted) = mirror::replace(
                conn,
                account,
                run.id,
                &read.assignments,
                read.digests.as_ref(),
                complete,
                read.started_at,
            )
            .await?;
            // What changed since the last report (docs/sync.md, "Only what changed"): only
            // those assets are recounted and re-reported below. Fixed here, before the asset
            // rows are locked (it reads the account's assignment history).
            let scope = drift_scope::fix(conn, account).await?;
            Ok(Some((inserted, deleted, scope)))
        })
        .await?;
    let Some((inserted, deleted, mut scope)) = mirrored else {
        return Ok(None);
    };
    let mirrored_at = chrono::Utc::now();

    let counted = conn
        .transaction(async |conn| {
            if !sync_runs::still_held(conn, claimed.job_id, worker).await? {
                return Ok::<_, diesel::result::Error>(None);
            }
            // Only the asset rows this read changes, and those recounted below, are locked
            // (in key order, as allocations lock them) and written: an unchanged location's
            // sync holds no allocation of its assets up. The others' rows are compared
            // unlocked; their counts were confirmed (`asset_list_reads`).
            let seen = mirror::assets_before(conn, account).await?;
            let seen: HashMap<(&str, &str), &mirror::AssetBefore> = seen
                .iter()
                .map(|b| ((b.adam_id.as_str(), b.pricing_param.as_str()), b))
                .collect();
            let lock_keys = match &scope.assets {
                None => None,
                Some(scoped) => {
                    let mut keys = scoped.clone();
                    if let Some(assets) = &read.assets {
                        for a in assets {
                            if seen
                                .get(&(a.adam_id.as_str(), a.pricing_param.as_str()))
                                .is_some_and(|b| b.differs_from(a))
                            {
                                keys.insert(&a.adam_id, &a.pricing_param);
                            }
                        }
                        if complete {
                            let listed: std::collections::HashSet<(&str, &str)> = assets
                                .iter()
                                .map(|a| (a.adam_id.as_str(), a.pricing_param.as_str()))
                                .collect();
                            for (key, b) in &seen {
                                if !b.vanished && !listed.contains(key) {
                                    keys.insert(key.0, key.1);
                                }
                            }
                        }
                    }
                    Some(keys)
                }
            };
            let before = mirror::lock_assets(conn, account, lock_keys.as_ref()).await?;
            let known: HashMap<(&str, &str), &mirror::AssetBefore> = before
                .iter()
                .map(|b| ((b.adam_id.as_str(), b.pricing_param.as_str()), b))
                .collect();
            let mut appeared = Vec::new();
            let mut vanished = Vec::new();
            let mut overcommitted = Vec::new();
            let mut counts_changed = 0;
            // Assets whose count_mismatch is judged again besides the scope's.
            let mut recount: Vec<(String, String)> = Vec::new();
            if let Some(assets) = &read.assets {
                let mut write = Vec::new();
                for a in assets {
                    let key = (a.adam_id.as_str(), a.pricing_param.as_str());
                    match known.get(&key) {
                        // Unchanged at the unlocked look, hence not locked: nothing to write.
                        None if seen.contains_key(&key) => {}
                        None => {
                            appeared.push(a);
                            write.push(a.clone());
                        }
                        Some(b) => {
                            if b.differs_from(a) {
                                write.push(a.clone());
                            }
                            if b.vanished {
                                appeared.push(a);
                            }
                            if (b.apple_total, b.apple_assigned, b.apple_retired)
                                != (a.total, a.assigned, a.retired)
                            {
                                counts_changed += 1;
                                recount.push((a.adam_id.clone(), a.pricing_param.clone()));
                            }
                            if a.total < b.held && (b.vanished || b.apple_total >= b.held) {
                                overcommitted.push((a, b.held));
                            }
                        }
                    }
                }
                mirror::upsert_assets(conn, account, &write).await?;
                if complete {
                    let listed: std::collections::HashSet<(&str, &str)> = assets
                        .iter()
                        .map(|a| (a.adam_id.as_str(), a.pricing_param.as_str()))
                        .collect();
                    vanished = before
                        .iter()
                        .filter(|b| !b.vanished)
                        .filter(|b| {
                            !listed.contains(&(b.adam_id.as_str(), b.pricing_param.as_str()))
                        })
                        .map(|b| (b.adam_id.clone(), b.pricing_param.clone()))
                        .collect();
                    mirror::mark_vanished(conn, account, &vanished).await?;
                }
            }
            // Assets whose counts changed, that vanished or appeared join the scope.
            for (adam, pricing) in recount.iter().chain(&vanished) {
                scope.count_also(adam, pricing);
            }
            for a in &appeared {
                scope.include(&a.adam_id, &a.pricing_param);
            }
            let foreign_changed =
                mirror::recount_foreign(conn, account, read.started_at, scope.assets.as_ref())
                    .await?;
            let users_changed = match &read.users {
                Some((registered, gone)) => {
                    let registered: Vec<&str> = registered.iter().map(String::as_str).collect();
                    let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
                    mirror::apply_users(conn, account, &registered, &gone, read.started_at).await?
                }
                None => 0,
            };
            mirror::mark_synced(
                conn,
                account,
                &Synced {
                    full: read.kind == crate::domain::reconciliation::SyncKind::Full,
                    assignments_version: read.assignments_version.as_deref(),
                    assets_version: read.assets_version.as_deref(),
                    users_version: read.users_version.as_deref(),
                    // Only a stable full read marks what Apple no longer lists as vanished:
                    // only then are the unlisted rows known not to be confirmed.
                    assets_read: complete && read.assets.is_some(),
                },
            )
            .await?;
            let system = Origin::system();
            let asset_activity = |action: &str, adam: &str, pricing: &str| {
                let mut a = Activity::new(&system, action)
                    .space(&run.space_id)
                    .account(account);
                a.adam_id = Some(adam.to_owned());
                a.pricing_param = Some(pricing.to_owned());
                a
            };
            for a in &appeared {
                activity::record(
                    conn,
                    asset_activity("asset.appeared", &a.adam_id, &a.pricing_param)
                        .details(json!({"run": run.id, "total": a.total, "assigned": a.assigned})),
                )
                .await?;
            }
            for (adam, pricing) in &vanished {
                activity::record(
                    conn,
                    asset_activity("asset.vanished", adam, pricing).details(json!({"run": run.id})),
                )
                .await?;
            }
            for (a, held) in &overcommitted {
                activity::record(
                    conn,
                    asset_activity("asset.overcommitted", &a.adam_id, &a.pricing_param)
                        .details(json!({"run": run.id, "total": a.total, "held": held})),
                )
                .await?;
            }
            let stats = json!({
                "assets_read": read.assets.as_ref().map_or(0, Vec::len),
                "assets_unchanged": read.assets.is_none(),
                "assignments_read": read.assignments.len(),
                "users_read": read.users.as_ref().map_or(0, |(r, g)| r.len() + g.len()),
                "mirror_inserted": inserted,
                "mirror_deleted": deleted,
                "assets_appeared": appeared.len(),
                "assets_vanished": vanished.len(),
                "assets_overcommitted": overcommitted.len(),
                "counts_changed": counts_changed,
                "foreign_changed": foreign_changed,
                "users_changed": users_changed,
                "assets_in_scope": scope.assets.as_ref().map(AssetKeys::len),
                "assets_locked": before.len(),
                "version_moved": read.version_moved,
                "fell_back_to_full": read.fell_back,
                "read_ms": (applying - read.started_at).num_milliseconds(),
                // The mirror's transaction (`counts_ms`, this one's, is added after its commit).
                "mirror_ms": (mirrored_at - applying).num_milliseconds(),
            });
            Ok(Some((stats, scope)))
        })
        .await?;
    let Some((mut stats, scope)) = counted else {
        return Ok(None);
    };
    // The transaction holding asset rows' locks, its commit included.
    stats["counts_ms"] = json!((chrono::Utc::now() - mirrored_at).num_milliseconds());

    // The drift report and the run's end: a transaction of their own, without the asset rows'
    // locks (the report over 100,000 mirror rows takes seconds; allocations of the account's
    // assets must not wait for it). A crash before it commits restarts the run, which applies
    // the same read again (idempotent) and then reports.
    let finished = conn
        .transaction(async |conn| {
            if !sync_runs::still_held(conn, claimed.job_id, worker).await? {
                return Ok::<_, diesel::result::Error>(None);
            }
            let system = Origin::system();
            let drift = crate::ledger::drift::recompute(
                conn,
                account,
                &crate::ledger::drift::Recompute {
                    run: run.id,
                    read_started_at: read.started_at,
                    stuck_after: settings.stuck_after,
                    full_and_stable: complete,
                    assets_read: read.assets.is_some(),
                    scope: &scope,
                },
            )
            .await?;
            drift_scope::advance(
                conn,
                account,
                read.started_at,
                &scope,
                complete,
                read.assets.is_some(),
            )
            .await?;
            let drift = serde_json::to_value(drift).unwrap_or_else(|_| json!({}));
            // How long the three transactions took, the last one up to here.
            let mut stats = stats.clone();
            stats["apply_ms"] = json!((chrono::Utc::now() - applying).num_milliseconds());
            let row = sync_runs::finish(
                conn,
                claimed.job_id,
                run.id,
                account,
                &Finish {
                    state: SyncState::Succeeded,
                    kind: read.kind,
                    progress: Progress {
                        requests: read.requests as i32,
                        pages_read: read.pages as i32,
                    },
                    stats: stats.clone(),
                    drift: drift.clone(),
                    error: None,
                    version_before: read.version_before.clone(),
                    version_after: read.assignments_version.clone(),
                },
            )
            .await?;
            activity::record(
                conn,
                Activity::new(&system, "sync.finished")
                    .space(&run.space_id)
                    .account(account)
                    .details(json!({
                        "run": run.id,
                        "kind": read.kind,
                        "trigger": run.trigger,
                        "state": SyncState::Succeeded,
                        "drift": drift,
                        "stats": stats,
                    })),
            )
            .await?;
            Ok(Some(row))
        })
        .await?;
    Ok(finished)
}

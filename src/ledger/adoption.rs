//! Taking Apple's licenses over (Adopt, and the first half of Clean Up; docs/sync.md): a row
//! Apple lists that no live assignment holds becomes an `active` assignment, rule `adopted`,
//! and its license moves from `foreign_assigned` to `held` under the asset row's lock (a move
//! leaves `held + foreign_assigned` as it was, so it passes even on an over-committed asset).
//! No Apple call: Apple already lists the license. Locks are taken in the ledger's order: the
//! subject, then the asset row.
//!
//! The checks and the writes are one sequence under the asset row's lock, so an allocation of
//! the same asset (which locks the row first) either sees the adopted license or is seen by it.

use diesel::sql_types::{Bool, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::domain::model::{Decision, LicenseType, Rule};
use crate::domain::origin::Origin;
use crate::ledger::plans::HELD_BY_LEDGER;

/// One license as Apple lists it: the key of an `apple_assignments` row.
#[derive(Clone, Debug)]
pub struct AppleLicense<'a> {
    pub account: Uuid,
    pub adam_id: &'a str,
    pub pricing_param: &'a str,
    pub license_type: LicenseType,
    /// Serial number (device licenses) or client user id (user licenses).
    pub target: &'a str,
}

/// What adopting one license did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The new assignment.
    Adopted(Uuid),
    /// Nothing changed, for this reason.
    Skipped(String),
}

#[derive(diesel::QueryableByName)]
struct Facts {
    #[diesel(sql_type = Bool)]
    asset: bool,
    #[diesel(sql_type = Bool)]
    listed: bool,
    #[diesel(sql_type = Bool)]
    held: bool,
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Who adopts, why, and what the activity row says.
pub struct AdoptedBy<'a> {
    pub origin: &'a Origin,
    /// The assignment's `reason`.
    pub reason: &'a str,
    /// The activity action (`assignment.adopted`, `assignment.cleaned_up`).
    pub action: &'a str,
    /// The activity row's details.
    pub details: serde_json::Value,
}

/// Adopts `license` into `space` (see the module doc). Run inside a transaction (a savepoint
/// per license: a failed statement rolls back that license alone).
pub async fn adopt(
    conn: &mut AsyncPgConnection,
    space: &str,
    license: &AppleLicense<'_>,
    by: &AdoptedBy<'_>,
) -> diesel::QueryResult<Adoption> {
    // The subject first, then the asset row: the ledger's lock order (allocation locks the
    // batch's subjects, then its asset rows), so an adoption never deadlocks with an
    // allocation of the same subject. (A subject row left by an adoption skipped below is
    // harmless: allocation requests create subjects the same way.)
    let kind = match license.license_type {
        LicenseType::Device => "device",
        LicenseType::User => "user",
    };
    let subject: Id = diesel::sql_query(
        "INSERT INTO subjects (id, space_id, kind, external_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT ON CONSTRAINT subjects_unique DO UPDATE SET kind = EXCLUDED.kind
         RETURNING id",
    )
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<Text, _>(space)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(license.target)
    .get_result(conn)
    .await?;
    let facts: Facts = diesel::sql_query(format!(
        "WITH m AS (SELECT $1::uuid AS account_id, $2::text AS adam_id, $3::text AS pricing_param,
                           $4::text AS license_type, $5::text AS target),
              locked AS (SELECT 1 FROM assets s, m
                          WHERE s.account_id = m.account_id AND s.adam_id = m.adam_id
                            AND s.pricing_param = m.pricing_param
                            FOR UPDATE OF s)
         SELECT EXISTS (SELECT 1 FROM locked) AS asset,
                EXISTS (SELECT 1 FROM apple_assignments a, m
                         WHERE a.account_id = m.account_id AND a.adam_id = m.adam_id
                           AND a.pricing_param = m.pricing_param
                           AND a.license_type = m.license_type AND a.target = m.target) AS listed,
                (SELECT {HELD_BY_LEDGER} FROM m) AS held"
    ))
    .bind::<SqlUuid, _>(license.account)
    .bind::<Text, _>(license.adam_id)
    .bind::<Text, _>(license.pricing_param)
    .bind::<Text, _>(license.license_type)
    .bind::<Text, _>(license.target)
    .get_result(conn)
    .await?;
    if !facts.asset {
        return Ok(Adoption::Skipped(
            "the asset is no longer in the ledger".into(),
        ));
    }
    if !facts.listed {
        return Ok(Adoption::Skipped(
            "Apple no longer lists this license (last sync)".into(),
        ));
    }
    if facts.held {
        return Ok(Adoption::Skipped(
            "a live assignment of the ledger now holds this license".into(),
        ));
    }
    let moved = diesel::sql_query(
        "UPDATE assets s SET held = s.held + 1,
                             foreign_assigned = GREATEST(s.foreign_assigned - 1, 0),
                             updated_at = now()
          WHERE s.account_id = $1 AND s.adam_id = $2 AND s.pricing_param = $3
            -- A move from `foreign_assigned` to `held` uses nothing new (it passes even on an
            -- asset Apple over-committed, where Clean Up is the remedy).
            AND (s.foreign_assigned >= 1 OR s.held + s.foreign_assigned + 1 <= s.apple_total)
            AND NOT EXISTS (SELECT 1 FROM accounts a
                             WHERE a.id = s.account_id AND a.delete_requested_at IS NOT NULL)",
    )
    .bind::<SqlUuid, _>(license.account)
    .bind::<Text, _>(license.adam_id)
    .bind::<Text, _>(license.pricing_param)
    .execute(conn)
    .await?;
    if moved == 0 {
        return Ok(Adoption::Skipped(
            "the asset's counts have no room for it (held + assigned elsewhere would exceed \
             Apple's total), or the account is being deleted"
                .into(),
        ));
    }
    if license.license_type == LicenseType::User {
        // Apple lists the user's license: the user is registered at the location.
        diesel::sql_query(
            "INSERT INTO apple_users (account_id, client_user_id, status) VALUES ($1, $2, 'registered')
             ON CONFLICT (account_id, client_user_id)
             DO UPDATE SET status = 'registered', updated_at = now()",
        )
        .bind::<SqlUuid, _>(license.account)
        .bind::<Text, _>(license.target)
        .execute(conn)
        .await?;
    }
    let decision = serde_json::to_value(Decision::default()).unwrap_or_default();
    let id: Id = diesel::sql_query(
        "INSERT INTO assignments (id, space_id, account_id, adam_id, pricing_param, subject_id,
                                  license_type, state, rule, decision, requested_by, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $10, $11)
         RETURNING id",
    )
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<Text, _>(space)
    .bind::<SqlUuid, _>(license.account)
    .bind::<Text, _>(license.adam_id)
    .bind::<Text, _>(license.pricing_param)
    .bind::<SqlUuid, _>(subject.id)
    .bind::<Text, _>(license.license_type)
    .bind::<Text, _>(Rule::Adopted)
    .bind::<Jsonb, _>(decision)
    .bind::<Text, _>(&by.origin.actor)
    .bind::<Text, _>(by.reason)
    .get_result(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO activity_log (space_id, actor, action, account_id, assignment_id, subject,
                                   adam_id, pricing_param, rule, request_id, details, version)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, version
           FROM assignments WHERE id = $5",
    )
    .bind::<Text, _>(space)
    .bind::<Text, _>(&by.origin.actor)
    .bind::<Text, _>(by.action)
    .bind::<SqlUuid, _>(license.account)
    .bind::<SqlUuid, _>(id.id)
    .bind::<Text, _>(format!("{kind}:{}", license.target))
    .bind::<Text, _>(license.adam_id)
    .bind::<Text, _>(license.pricing_param)
    .bind::<Text, _>(Rule::Adopted)
    .bind::<Nullable<Text>, _>(by.origin.request_id.as_deref())
    .bind::<Jsonb, _>(by.details.clone())
    .execute(conn)
    .await?;
    Ok(Adoption::Adopted(id.id))
}

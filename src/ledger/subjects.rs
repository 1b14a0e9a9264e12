//! Subjects: devices and users, with the group memberships the calling MDM reported; and the
//! reads of the device and user views (a subject's stored facts, its devices, its licenses).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{accounts, assets, assignments, subjects};
use crate::domain::model::{LicenseType, SubjectKind};
use crate::domain::records::{AssignmentRow, SubjectRow};

pub async fn find(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    external_id: &str,
) -> QueryResult<Option<SubjectRow>> {
    subjects::table
        .filter(subjects::space_id.eq(space))
        .filter(subjects::kind.eq(kind))
        .filter(subjects::external_id.eq(external_id))
        .select(SubjectRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The subjects of `space` of one `kind` among `external_ids` that exist (a batch of lifecycle
/// events looks its subjects up in one statement).
pub async fn find_many(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    external_ids: &[&str],
) -> QueryResult<Vec<SubjectRow>> {
    subjects::table
        .filter(subjects::space_id.eq(space))
        .filter(subjects::kind.eq(kind))
        .filter(subjects::external_id.eq_any(external_ids))
        .select(SubjectRow::as_select())
        .load(conn)
        .await
}

pub async fn by_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<SubjectRow>> {
    subjects::table
        .filter(subjects::id.eq_any(ids))
        .select(SubjectRow::as_select())
        .load(conn)
        .await
}

/// The kind and external id of each of `ids` that exists (the assignment views' subjects:
/// nothing else of the row is read).
pub async fn names_by_ids(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<(Uuid, SubjectKind, String)>> {
    subjects::table
        .filter(subjects::id.eq_any(ids))
        .select((subjects::id, subjects::kind, subjects::external_id))
        .load(conn)
        .await
}

/// A subject as stored, with when the space first saw it (`created_at`) and when an allocation
/// last changed its stored facts (`updated_at`, moved by the trigger `subjects_touch_updated_at`
/// only when groups, user or Shared iPad change).
#[derive(Clone, Debug)]
pub struct StoredSubject {
    pub row: SubjectRow,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the MDM last saw the subject (`device.seen`, `PUT …`), if it said.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// [`find`] with the row's timestamps (the device and user views).
pub async fn find_stored(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    external_id: &str,
) -> QueryResult<Option<StoredSubject>> {
    subjects::table
        .filter(subjects::space_id.eq(space))
        .filter(subjects::kind.eq(kind))
        .filter(subjects::external_id.eq(external_id))
        .select((
            SubjectRow::as_select(),
            subjects::created_at,
            subjects::updated_at,
            subjects::last_seen_at,
        ))
        .first(conn)
        .await
        .optional()
        .map(|found| {
            found.map(
                |(row, created_at, updated_at, last_seen_at)| StoredSubject {
                    row,
                    created_at,
                    updated_at,
                    last_seen_at,
                },
            )
        })
}

/// The serial numbers of the space's devices whose user is `user` (at most `limit`, in serial
/// order), and how many there are in all. Reads the partial index `subjects_by_user`.
pub async fn devices_of_user(
    conn: &mut AsyncPgConnection,
    space: &str,
    user: &str,
    limit: i64,
) -> QueryResult<(Vec<String>, i64)> {
    let of_user = || {
        subjects::table
            .filter(subjects::space_id.eq(space))
            .filter(subjects::user_external_id.eq(user))
            .filter(subjects::kind.eq(SubjectKind::Device))
    };
    let serials = of_user()
        .select(subjects::external_id)
        .order(subjects::external_id.asc())
        .limit(limit)
        .load(conn)
        .await?;
    let total = if (serials.len() as i64) < limit {
        serials.len() as i64
    } else {
        of_user().count().get_result(conn).await?
    };
    Ok((serials, total))
}

/// One license a subject holds or held: the assignment, with its asset's product type and its
/// account's name joined when those rows still exist (history outlives accounts, rule H1).
#[derive(Clone, Debug)]
pub struct SubjectLicense {
    pub assignment: AssignmentRow,
    /// `App`, `Book` or `Other`; `None` once the asset row is gone.
    pub product_type: Option<String>,
    /// `None` once the account is gone.
    pub account_name: Option<String>,
}

/// Which of a subject's licenses to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// License-holding (`pending`, `associating`, `active`), oldest first, all of them.
    Live,
    /// The others (`revoking`, `revoked`, `failed`), newest first (UUIDv7 ids: creation order).
    /// Waiting assignments (A12) are neither: they hold no license yet and are not past; they
    /// are shown with their place in line by the assignment views, not here.
    Past,
}

const LIVE: [&str; 3] = ["pending", "associating", "active"];
/// Live, and waiting for a license (A12): neither is a past assignment.
const NOT_PAST: [&str; 4] = ["pending", "associating", "active", "waiting"];

/// The subject's licenses of one kind ([`Held`]), at most `limit`, with asset and account facts
/// (two left joins by primary key). Reads the index `assignments_by_subject`.
pub async fn licenses(
    conn: &mut AsyncPgConnection,
    space: &str,
    subject: Uuid,
    held: Held,
    limit: i64,
) -> QueryResult<Vec<SubjectLicense>> {
    let q = assignments::table
        .left_join(
            assets::table.on(assets::account_id
                .eq(assignments::account_id)
                .and(assets::adam_id.eq(assignments::adam_id))
                .and(assets::pricing_param.eq(assignments::pricing_param))),
        )
        .left_join(accounts::table.on(accounts::id.eq(assignments::account_id)))
        .filter(assignments::space_id.eq(space))
        .filter(assignments::subject_id.eq(subject))
        .select((
            AssignmentRow::as_select(),
            assets::product_type.nullable(),
            accounts::name.nullable(),
        ))
        .limit(limit)
        .into_boxed();
    let q = match held {
        Held::Live => q
            .filter(assignments::state.eq_any(LIVE))
            .order(assignments::id.asc()),
        Held::Past => q
            .filter(assignments::state.ne_all(NOT_PAST))
            .order(assignments::id.desc()),
    };
    let rows: Vec<(AssignmentRow, Option<String>, Option<String>)> = q.load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(assignment, product_type, account_name)| SubjectLicense {
            assignment,
            product_type,
            account_name,
        })
        .collect())
}

/// How many past (not license-holding, not waiting) assignments the subject has.
pub async fn count_past(
    conn: &mut AsyncPgConnection,
    space: &str,
    subject: Uuid,
) -> QueryResult<i64> {
    assignments::table
        .filter(assignments::space_id.eq(space))
        .filter(assignments::subject_id.eq(subject))
        .filter(assignments::state.ne_all(NOT_PAST))
        .count()
        .get_result(conn)
        .await
}

/// Everything the device and user views show, read in one snapshot.
#[derive(Clone, Debug)]
pub struct SubjectReport {
    pub subject: StoredSubject,
    /// Every license-holding assignment, oldest first.
    pub live: Vec<SubjectLicense>,
    /// The newest `past_limit` other assignments, newest first.
    pub past: Vec<SubjectLicense>,
    /// How many other assignments there are in all.
    pub past_total: i64,
    /// Users: serial numbers of the devices whose user this is (at most `devices_limit`), and
    /// their number. Devices: empty and 0.
    pub devices: Vec<String>,
    pub devices_total: i64,
    /// Devices with a user, not Shared iPads: that user's live user-based licenses, which cover
    /// the device (rule A7). Otherwise empty.
    pub user_licenses: Vec<SubjectLicense>,
}

/// Limits of a [`report`].
#[derive(Clone, Copy, Debug)]
pub struct ReportLimits {
    pub past: i64,
    pub devices: i64,
}

/// The subject's [`SubjectReport`], `None` when the space never saw it. One read-only
/// `REPEATABLE READ` transaction, so a license changing state meanwhile is counted once.
pub async fn report(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    external_id: &str,
    limits: ReportLimits,
) -> QueryResult<Option<SubjectReport>> {
    conn.build_transaction()
        .read_only()
        .repeatable_read()
        .run(async |conn| {
            let Some(subject) = find_stored(conn, space, kind, external_id).await? else {
                return Ok(None);
            };
            let id = subject.row.id;
            let live = licenses(conn, space, id, Held::Live, i64::MAX).await?;
            let past = if limits.past > 0 {
                licenses(conn, space, id, Held::Past, limits.past).await?
            } else {
                Vec::new()
            };
            let past_total = if (past.len() as i64) < limits.past {
                past.len() as i64
            } else {
                count_past(conn, space, id).await?
            };
            let (devices, devices_total) = match kind {
                SubjectKind::User => {
                    devices_of_user(conn, space, external_id, limits.devices).await?
                }
                SubjectKind::Device => (Vec::new(), 0),
            };
            let user_licenses = match (&subject.row.user_external_id, subject.row.shared_ipad) {
                (Some(user), false) => match find(conn, space, SubjectKind::User, user).await? {
                    Some(user) => licenses(conn, space, user.id, Held::Live, i64::MAX)
                        .await?
                        .into_iter()
                        .filter(|l| l.assignment.license_type == LicenseType::User)
                        .collect(),
                    None => Vec::new(),
                },
                _ => Vec::new(),
            };
            Ok(Some(SubjectReport {
                subject,
                live,
                past,
                past_total,
                devices,
                devices_total,
                user_licenses,
            }))
        })
        .await
}

/// The subject `(kind, external_id)` of `space`, created without facts when the space never saw
/// it, locked (`FOR UPDATE`) until the caller's transaction ends: lifecycle events and
/// `PUT …/devices|users/…` change its facts.
pub async fn upsert_locked(
    conn: &mut AsyncPgConnection,
    space: &str,
    kind: SubjectKind,
    external_id: &str,
) -> QueryResult<SubjectRow> {
    diesel::insert_into(subjects::table)
        .values((
            subjects::id.eq(Uuid::now_v7()),
            subjects::space_id.eq(space),
            subjects::kind.eq(kind),
            subjects::external_id.eq(external_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    subjects::table
        .filter(subjects::space_id.eq(space))
        .filter(subjects::kind.eq(kind))
        .filter(subjects::external_id.eq(external_id))
        .select(SubjectRow::as_select())
        .for_update()
        .first(conn)
        .await
}

/// New facts of a subject; `None` leaves a fact as it is.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub groups: Option<Vec<String>>,
    /// `Some(None)`: the device has no user now.
    pub user: Option<Option<String>>,
    pub shared_ipad: Option<bool>,
    /// Moves the last sighting forward (never back).
    pub last_seen: Option<DateTime<Utc>>,
}

/// Writes `facts` on subject `id`.
pub async fn set_facts(conn: &mut AsyncPgConnection, id: Uuid, facts: &Facts) -> QueryResult<()> {
    let target = || subjects::table.filter(subjects::id.eq(id));
    if let Some(groups) = &facts.groups {
        let groups: Vec<Option<String>> = groups.iter().cloned().map(Some).collect();
        diesel::update(target())
            .set(subjects::groups.eq(groups))
            .execute(conn)
            .await?;
    }
    if let Some(user) = &facts.user {
        diesel::update(target())
            .set(subjects::user_external_id.eq(user.clone()))
            .execute(conn)
            .await?;
    }
    if let Some(shared) = facts.shared_ipad {
        diesel::update(target())
            .set(subjects::shared_ipad.eq(shared))
            .execute(conn)
            .await?;
    }
    if let Some(seen) = facts.last_seen {
        diesel::update(
            target().filter(
                subjects::last_seen_at
                    .is_null()
                    .or(subjects::last_seen_at.lt(seen)),
            ),
        )
        .set(subjects::last_seen_at.eq(seen))
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// The subject ids of the devices of `space` whose user is `user`.
pub async fn device_ids_of_user(
    conn: &mut AsyncPgConnection,
    space: &str,
    user: &str,
) -> QueryResult<Vec<Uuid>> {
    subjects::table
        .filter(subjects::space_id.eq(space))
        .filter(subjects::user_external_id.eq(user))
        .filter(subjects::kind.eq(SubjectKind::Device))
        .select(subjects::id)
        .load(conn)
        .await
}

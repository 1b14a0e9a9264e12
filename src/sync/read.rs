//! Reading Apple's side of an account for a sync (docs/sync.md, Full / Incremental).
//!
//! - **Full**: the client config (ownership), every page of `/assets` and `/assignments`, and
//!   `/users` when the account uses user licenses.
//! - **Incremental**: `/assignments?sinceVersionId=` (and `/users` since theirs), and page 0 of
//!   `/assets`, which is all that is read when its `versionId` is the stored one. Apple's 9721
//!   (unknown versionId) turns the read into a full one.
//!
//! Reads go through the client's background priority (the dispatcher's requests go first) and
//! are tolerant of a moving `versionId` (`version_moved`: such a read deletes nothing).

use chrono::{DateTime, Utc};

use crate::apple::client::{AppleClient, AssetQuery, AssignmentQuery, Listing, UserQuery};
use crate::apple::codes;
use crate::apple::error::AppleError;
use crate::apple::stoken::SToken;
use crate::apple::types::{ResponseMeta, UserStatus};
use crate::domain::reconciliation::SyncKind;
use crate::ledger::apple_mirror::{MirrorRow, ReadDigests};
use crate::ledger::assets::AppleAsset;

/// What the account's last sync left to read from.
#[derive(Clone, Debug, Default)]
pub struct Known {
    pub assignments_version: Option<String>,
    pub assets_version: Option<String>,
    pub users_version: Option<String>,
    /// The account uses user licenses (read `/users`).
    pub users: bool,
}

/// What a sync read.
#[derive(Debug)]
pub struct Read {
    /// What the read turned out to be (an incremental read Apple answered 9721 is full).
    pub kind: SyncKind,
    /// An incremental read fell back to full (9721).
    pub fell_back: bool,
    pub started_at: DateTime<Utc>,
    /// Apple's assets; `None` when page 0 showed nothing changed since the last sync.
    pub assets: Option<Vec<AppleAsset>>,
    pub assets_version: Option<String>,
    /// Apple's assignments read (sorted, distinct): all of them (full) or those changed since
    /// the last read (incremental).
    pub assignments: Vec<MirrorRow>,
    /// The digests of `assignments` per asset (full reads; see [`ReadDigests`]).
    pub digests: Option<ReadDigests>,
    pub assignments_version: Option<String>,
    /// The assignments' versionId the account had before this read.
    pub version_before: Option<String>,
    /// Users read: (registered, retired or deleted) client user ids; `None` when not read.
    pub users: Option<(Vec<String>, Vec<String>)>,
    pub users_version: Option<String>,
    /// A `versionId` moved during a read: nothing unseen may be deleted.
    pub version_moved: bool,
    /// Metadata of the client config (full reads): who owns the location.
    pub meta: Option<ResponseMeta>,
    pub requests: u32,
    pub pages: u32,
}

impl Read {
    /// A full read whose every list is complete and stable: rows it did not see are gone.
    pub fn complete(&self) -> bool {
        self.kind == SyncKind::Full && !self.version_moved
    }
}

/// Apple's counters so far, kept when a read fails (the run records them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub requests: u32,
    pub pages: u32,
}

impl Counters {
    fn add<T>(&mut self, listing: &Listing<T>) {
        self.requests += listing.requests;
        self.pages += listing.pages;
    }
}

/// Reads Apple for a sync of `kind`. `counters` holds the requests made even when it fails.
pub async fn read(
    apple: &AppleClient,
    token: &SToken,
    kind: SyncKind,
    known: &Known,
    started_at: DateTime<Utc>,
    counters: &mut Counters,
) -> Result<Read, AppleError> {
    if kind == SyncKind::Incremental
        && let Some(since) = known.assignments_version.as_deref()
    {
        match incremental(apple, token, since, known, started_at, counters).await {
            Err(e) if e.error_number == Some(codes::INVALID_VERSION_ID) => {
                tracing::info!("Apple no longer knows the versionId; the sync reads everything");
                let mut read = full(apple, token, known, started_at, counters).await?;
                read.fell_back = true;
                return Ok(read);
            }
            other => return other,
        }
    }
    full(apple, token, known, started_at, counters).await
}

async fn full(
    apple: &AppleClient,
    token: &SToken,
    known: &Known,
    started_at: DateTime<Utc>,
    counters: &mut Counters,
) -> Result<Read, AppleError> {
    // The three listings at once: the client's pacer keeps the token's background requests to
    // five in flight and Apple's rate, so the read is bound by the rate from its first second.
    let (asset_query, assignment_query) = (AssetQuery::default(), AssignmentQuery::default());
    let (config, assets, assignments) = tokio::try_join!(
        apple.get_client_config(token),
        apple.read_assets(token, &asset_query, None),
        apple.read_assignments_as(token, &assignment_query, mirror_row),
    )?;
    counters.requests += 1;
    counters.add(&assets);
    counters.add(&assignments);
    let wants_users = known.users || assignments.items.iter().any(|r| r.license_type == "user");
    let users = if wants_users {
        let users = apple.read_users(token, &UserQuery::default()).await?;
        counters.add(&users);
        Some(users)
    } else {
        None
    };
    let version_moved = assets.version_moved
        || assignments.version_moved
        || users.as_ref().is_some_and(|u| u.version_moved);
    let (users, users_version) = split_users(users);
    let (assignments_rows, digests) = rows_and_digests(assignments.items).await;
    Ok(Read {
        kind: SyncKind::Full,
        fell_back: false,
        started_at,
        assets: Some(assets.items.iter().map(AppleAsset::from_apple).collect()),
        assets_version: assets.version_id,
        assignments: assignments_rows,
        digests: Some(digests),
        assignments_version: assignments.version_id,
        version_before: known.assignments_version.clone(),
        users,
        users_version,
        version_moved,
        meta: Some(config.meta),
        requests: counters.requests,
        pages: counters.pages,
    })
}

async fn incremental(
    apple: &AppleClient,
    token: &SToken,
    since: &str,
    known: &Known,
    started_at: DateTime<Utc>,
    counters: &mut Counters,
) -> Result<Read, AppleError> {
    // The listings at once, as a full read does.
    let users_query = UserQuery {
        since_version_id: known.users_version.clone(),
        ..Default::default()
    };
    let assignment_query = AssignmentQuery {
        since_version_id: Some(since.to_owned()),
        ..Default::default()
    };
    let asset_query = AssetQuery::default();
    let (assignments, users, assets) = tokio::try_join!(
        apple.read_assignments_as(token, &assignment_query, mirror_row),
        async {
            if known.users {
                apple.read_users(token, &users_query).await.map(Some)
            } else {
                Ok(None)
            }
        },
        apple.read_assets(token, &asset_query, known.assets_version.as_deref()),
    )?;
    counters.add(&assignments);
    if let Some(users) = &users {
        counters.add(users);
    }
    counters.add(&assets);
    let version_moved = assets.version_moved
        || assignments.version_moved
        || users.as_ref().is_some_and(|u| u.version_moved);
    let (users, users_version) = split_users(users);
    Ok(Read {
        kind: SyncKind::Incremental,
        fell_back: false,
        started_at,
        assets: (!assets.unchanged)
            .then(|| assets.items.iter().map(AppleAsset::from_apple).collect()),
        assets_version: assets.version_id,
        assignments: sorted(assignments.items),
        digests: None,
        assignments_version: assignments.version_id,
        version_before: known.assignments_version.clone(),
        users,
        users_version,
        version_moved,
        meta: None,
        requests: counters.requests,
        pages: counters.pages,
    })
}

type Users = Option<(Vec<String>, Vec<String>)>;

fn split_users(listing: Option<Listing<crate::apple::types::User>>) -> (Users, Option<String>) {
    let Some(listing) = listing else {
        return (None, None);
    };
    let (mut registered, mut gone) = (Vec::new(), Vec::new());
    for user in listing.items {
        if user.client_user_id.is_empty() {
            continue;
        }
        match user.status {
            Some(UserStatus::Retired) | Some(UserStatus::Deleted) => gone.push(user.client_user_id),
            _ => registered.push(user.client_user_id),
        }
    }
    // A user listed twice (a read whose versionId moved): its last status wins.
    registered.retain(|u| !gone.contains(u));
    registered.sort();
    registered.dedup();
    gone.sort();
    gone.dedup();
    (Some((registered, gone)), listing.version_id)
}

/// A full read's rows, sorted, and their digests: CPU work of about 100 ms for 100,000
/// assignments, done on a blocking thread so that the runtime's threads, which also decide
/// allocations, are not held by it (the allocation latency during syncs, docs/benchmarks.md).
async fn rows_and_digests(rows: Vec<MirrorRow>) -> (Vec<MirrorRow>, ReadDigests) {
    let work = || {
        let rows = sorted(rows);
        let digests = ReadDigests::of(&rows);
        (rows, digests)
    };
    // Without a multi-threaded runtime (some tests) there is no pool to hand it to.
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::MultiThread
    {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        // A panic goes on as one; a blocking task is only cancelled when the runtime shuts
        // down, and then the run is abandoned with its job, whose lease lets it be resumed.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// One of Apple's assignments as a mirror row (`None`: Apple named neither a device nor a
/// user). The client calls it on each page as it arrives.
fn mirror_row(a: crate::apple::types::Assignment) -> Option<MirrorRow> {
    let (license_type, target) = match (a.serial_number, a.client_user_id) {
        (Some(serial), _) => ("device", serial),
        (None, Some(user)) => ("user", user),
        (None, None) => return None,
    };
    Some(MirrorRow {
        adam_id: a.adam_id,
        pricing_param: a.pricing_param.as_str().to_owned(),
        license_type,
        target,
    })
}

/// Rows sorted and distinct (a moving read may list one twice; an upsert statement must not
/// touch a row twice).
fn sorted(mut rows: Vec<MirrorRow>) -> Vec<MirrorRow> {
    rows.sort_unstable();
    rows.dedup();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apple::types::{Assignment, PricingParam, User};

    #[test]
    fn assignments_become_distinct_rows_by_license_type() {
        let a = |serial: Option<&str>, user: Option<&str>| Assignment {
            adam_id: "1".into(),
            pricing_param: PricingParam::Stdq,
            serial_number: serial.map(Into::into),
            client_user_id: user.map(Into::into),
            ..Default::default()
        };
        let rows = sorted(
            [
                a(Some("S1"), None),
                a(None, Some("u1")),
                a(Some("S1"), None),
                a(None, None),
            ]
            .into_iter()
            .filter_map(mirror_row)
            .collect(),
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].license_type, "device");
        assert_eq!(rows[1].license_type, "user");
        assert_eq!(rows[1].target, "u1");
    }

    #[test]
    fn retired_and_deleted_users_are_no_longer_registered() {
        let u = |id: &str, status: UserStatus| User {
            client_user_id: id.into(),
            status: Some(status),
            ..Default::default()
        };
        let listing = Listing {
            items: vec![
                u("a", UserStatus::Registered),
                u("b", UserStatus::Retired),
                u("c", UserStatus::Associated),
                u("b", UserStatus::Registered),
                u("d", UserStatus::Deleted),
            ],
            version_id: Some("v".into()),
            meta: ResponseMeta::default(),
            pages: 1,
            requests: 1,
            version_moved: false,
            unchanged: false,
        };
        let (users, version) = split_users(Some(listing));
        let (registered, gone) = users.unwrap();
        assert_eq!(registered, vec!["a".to_owned(), "c".to_owned()]);
        assert_eq!(gone, vec!["b".to_owned(), "d".to_owned()]);
        assert_eq!(version.as_deref(), Some("v"));
    }
}

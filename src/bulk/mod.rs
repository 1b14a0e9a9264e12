//! Bulk operations (rule V6, issue 14): allocate or revoke up to 20 assets for up to 100,000
//! subjects, listed or matched by a selector, as one operation resource with progress, a dry
//! run and cancel. The vocabulary and pure rules are [`crate::domain::bulk`]; the statements
//! [`crate::ledger::bulk_operations`]; the transport `api::bulk`; the worker `dispatch::bulk`.
//!
//! # Creating ([`create`], [`plan`])
//! The space must exist and some account of it must own every asset named (else 404
//! `asset-not-found`; nothing is stored). A selector is resolved when the operation is created:
//! a group's members are the devices and users whose stored groups include it, an asset's
//! holders the subjects holding a live license of it then; subjects that join later are not in
//! the operation (a snapshot, like the list a caller would send). Repeated subjects count once.
//! The operation and its subjects are stored in one transaction with a `bulk.created` activity
//! row, `queued`; nothing is decided in the request.
//!
//! A dry run ([`plan`]) resolves the same subjects and decides every item with the allocation
//! rules themselves ([`crate::engine::allocate::plan_many`], chunk by chunk, carrying the
//! licenses the plan already gave from one chunk to the next, so it says where licenses run
//! out) or finds the licenses a revocation would release; it writes nothing.
//!
//! # Running ([`run_next`], by the dispatcher's bulk worker)
//! One chunk ([`crate::domain::bulk::CHUNK`] subjects × the assets) per transaction: the worker
//! claims the oldest unfinished operation with `FOR UPDATE SKIP LOCKED`, decides the chunk's
//! allocations in one batch ([`crate::engine::allocate::allocate_many`]: licenses, Apple jobs and
//! activity rows in one statement) or starts its revocations
//! ([`crate::ledger::revocations::start`], the statement `POST …/revocations` runs), and
//! advances the operation's `next_index`, counts and error sample in the same transaction. So
//! a chunk is applied exactly once, even with several replicas or a process killed mid-chunk
//! (its transaction rolls back and the chunk is claimed again). A database failure counts an
//! attempt; after [`crate::domain::bulk::MAX_ATTEMPTS`] the operation is `failed`, with the
//! chunks before it done.
//!
//! Interactive allocations keep priority: an asset row is locked for one chunk's transaction
//! only (well under a second), so an interactive allocation waits at most one chunk, and
//! between chunks the worker lets every other transaction in. Each chunk's associations are
//! whole Apple requests per asset (1,000 subjects, Apple's limit), which the dispatcher sends as
//! they come (a burst), so the operation costs the minimum number of Apple requests.
//!
//! Every allocation and revocation of an operation is recorded with the operation's caller as
//! actor, the creating request's `request_id` (the activity log's `request_id` filter lists
//! everything the operation did) and a reason naming the operation (`bulk operation <id>: …`).
//!
//! # Cancelling ([`cancel`])
//! Sets the operation `cancelled` at once if it is not finished (409 otherwise); it waits for
//! the chunk in hand (the row lock) and no chunk runs after it. What the chunks before did
//! stays done: the counts say how far it went.

mod create;
mod run;

pub use create::{Request, Who, create, plan};
pub use run::run_next;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::domain::bulk::BulkState;
use crate::domain::origin::Origin;
use crate::engine::allocate::AllocationError;
use crate::ledger::activity::{self, Activity, ActivityAction};
use crate::ledger::bulk_operations::{self as store, BulkRow};
use crate::ledger::spaces;

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The space or operation does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// No account of the space owns these assets.
    #[error("{0}")]
    UnknownAssets(String),
    /// A selector matched more subjects than an operation takes.
    #[error("{0}")]
    TooManySubjects(String),
    /// The operation is already finished (cancel).
    #[error("bulk operation {id} is already {state}")]
    Finished { id: Uuid, state: BulkState },
    #[error(transparent)]
    Allocation(#[from] AllocationError),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// One operation of `space`.
pub async fn get(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
) -> Result<BulkRow, BulkError> {
    store::find(conn, space, id)
        .await?
        .ok_or_else(|| BulkError::NotFound(format!("bulk operation {id}")))
}

/// A page of the operations of `space`, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    space: &str,
    after: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<BulkRow>, BulkError> {
    if spaces::find(conn, space).await?.is_none() {
        return Err(BulkError::NotFound(format!("space {space}")));
    }
    Ok(store::list(conn, space, after, limit).await?)
}

/// Cancels an unfinished operation (see the module documentation).
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    origin: &Origin,
) -> Result<BulkRow, BulkError> {
    conn.transaction(
        async |conn| match store::cancel(conn, space, id, &origin.actor).await? {
            Some(row) => {
                let counts = row.counts();
                activity::record(
                    conn,
                    Activity::new(origin, ActivityAction::BulkCancelled.as_str())
                        .space(space)
                        .details(serde_json::json!({
                            "operation": id,
                            "counts": counts,
                        })),
                )
                .await?;
                Ok(row)
            }
            None => {
                let row = get(conn, space, id).await?;
                Err(BulkError::Finished {
                    id,
                    state: row.state,
                })
            }
        },
    )
    .await
}

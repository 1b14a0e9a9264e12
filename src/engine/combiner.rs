//! Gathers the concurrent requests of one process into batches (application-level group
//! commit): allocations ([`super::allocate::Allocations`]) and revocations of one assignment
//! ([`super::revoke::Revocations`]).
//!
//! Requests queue up; a few executors each take whatever is queued (up to `max_batch`), group it
//! by space and decide each group in one transaction ([`Batched::decide_many`]). Under load,
//! batches grow by themselves: a hot asset costs one lock hand-off and one commit per batch, not
//! per request. Under light load a batch is a single request and nothing waits.
//!
//! Two executors per kind and process (see `AppState`): one batch is being decided while the
//! next one gathers. Measured with the allocation benchmark on 2 cores, four executors halved
//! the batch size and cost 10-30% throughput (more transactions contending for the same rows).
//!
//! A batch that fails as a whole (a deadlock with another replica, a lost connection) is
//! retried once, request by request ([`Batched::decide_one`]), so one bad request cannot fail
//! its neighbours — on a fresh connection from the pool, since the batch's own may be dead (a
//! server restart, a terminated backend). When the batch's commit was lost with the connection,
//! its outcome is unknown; the retries find out: an allocation that did commit answers its
//! existing assignment (A6), a revocation that did commit answers the assignment `revoking`;
//! one that did not is decided again. A batch of one request is not retried (unless
//! [`Batched::retry_alone`] says so): its caller hears 503 and retrying answers the truth the
//! same way (README "Errors").

use std::collections::BTreeMap;
use std::sync::Arc;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::db::Pool;

/// The pool's error when no connection could be had.
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// A batch's answers: per request (in order), or the error that failed the whole batch.
pub type Decided<'a, O, E> = BoxFuture<'a, Result<Vec<Result<O, E>>, E>>;

/// One kind of request decided in batches.
pub trait Batched: Send + Sync + 'static {
    type Req: Send + Sync + 'static;
    type Out: Send + 'static;
    type Err: From<diesel::result::Error> + std::fmt::Display + Send + 'static;
    /// The name of the batch-size histogram (`<kind>_batch_size`).
    const METRIC: &'static str;
    /// The space a request is decided in (a batch is one space's).
    fn space(req: &Self::Req) -> &str;
    /// Decides `reqs` of `space` inside the combiner's transaction. The outer error fails the
    /// whole batch (rolled back, then retried one by one); inner results are per request.
    fn decide_many<'a>(
        conn: &'a mut AsyncPgConnection,
        space: &'a str,
        reqs: &'a [&'a Self::Req],
    ) -> Decided<'a, Self::Out, Self::Err>;
    /// Decides one request in a transaction of its own (the retry of a failed batch).
    fn decide_one<'a>(
        conn: &'a mut AsyncPgConnection,
        req: &'a Self::Req,
    ) -> BoxFuture<'a, Result<Self::Out, Self::Err>>;
    /// The error a caller hears when no connection could be had (`source`) or the executors
    /// stopped.
    fn unavailable(why: &'static str, source: Option<Arc<PoolError>>) -> Self::Err;
    /// Whether a batch of one request that failed as a whole is decided again on its own (the
    /// failure says deciding again gives the answer).
    fn retry_alone(_err: &Self::Err) -> bool {
        false
    }
}

type Reply<B> = oneshot::Sender<Result<<B as Batched>::Out, <B as Batched>::Err>>;

struct Pending<B: Batched> {
    req: B::Req,
    reply: Reply<B>,
}

pub struct Combiner<B: Batched> {
    queue: mpsc::UnboundedSender<Pending<B>>,
}

impl<B: Batched> Combiner<B> {
    /// Starts `executors` executors on the current runtime.
    pub fn start(pool: Pool, executors: usize, max_batch: usize) -> Arc<Combiner<B>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..executors.max(1) {
            tokio::spawn(execute::<B>(pool.clone(), rx.clone(), max_batch.max(1)));
        }
        Arc::new(Combiner { queue: tx })
    }

    /// Decides `req` in the next batch.
    pub async fn submit(&self, req: B::Req) -> Result<B::Out, B::Err> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { req, reply })
            .map_err(|_| B::unavailable("the batch executors stopped", None))?;
        answer
            .await
            .unwrap_or_else(|_| Err(B::unavailable("the batch executor stopped", None)))
    }
}

async fn execute<B: Batched>(
    pool: Pool,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Pending<B>>>>,
    max_batch: usize,
) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        let mut by_space: BTreeMap<String, Vec<Pending<B>>> = BTreeMap::new();
        for p in batch {
            by_space
                .entry(B::space(&p.req).to_owned())
                .or_default()
                .push(p);
        }
        for (space, group) in by_space {
            run::<B>(&pool, &space, group).await;
        }
    }
}

/// A pooled connection, or every caller of `group` told none could be had.
async fn connection<B: Batched>(
    pool: &Pool,
    group: Vec<Pending<B>>,
) -> Option<(crate::db::pool::Conn, Vec<Pending<B>>)> {
    match pool.get().await {
        Ok(c) => Some((c, group)),
        Err(e) => {
            tracing::warn!(error = %e, "database pool unavailable for a batch");
            let e = Arc::new(e);
            for p in group {
                let _ = p
                    .reply
                    .send(Err(B::unavailable("no pooled connection", Some(e.clone()))));
            }
            None
        }
    }
}

async fn run<B: Batched>(pool: &Pool, space: &str, group: Vec<Pending<B>>) {
    let Some((mut conn, group)) = connection::<B>(pool, group).await else {
        return;
    };
    metrics::histogram!(B::METRIC).record(group.len() as f64);
    let reqs: Vec<&B::Req> = group.iter().map(|p| &p.req).collect();
    let result = conn
        .transaction(async |conn| B::decide_many(conn, space, &reqs).await)
        .await;
    match result {
        Ok(outcomes) => {
            for (p, o) in group.into_iter().zip(outcomes) {
                let _ = p.reply.send(o);
            }
        }
        Err(e) if group.len() == 1 && !B::retry_alone(&e) => {
            if let Some(p) = group.into_iter().next() {
                let _ = p.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, size = group.len(), "batch failed; retrying one by one");
            // The batch's connection may be dead: the pool verifies the one it hands back.
            drop(conn);
            let Some((mut conn, group)) = connection::<B>(pool, group).await else {
                return;
            };
            for p in group {
                let outcome = B::decide_one(&mut conn, &p.req).await;
                let _ = p.reply.send(outcome);
            }
        }
    }
}

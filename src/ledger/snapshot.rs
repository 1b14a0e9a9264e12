//! A consistent, read-only view of the ledger for reads that span many statements (exports).
//!
//! [`begin`] opens a `REPEATABLE READ READ ONLY` transaction: every later statement on the
//! connection sees the ledger as it was at the first one, so a list read chunk by chunk (keyset
//! pagination) neither skips nor repeats a row that changes meanwhile. The price: while it is
//! open PostgreSQL keeps the row versions it may still read (vacuum is held back for that long),
//! so only bounded reads should use it. [`end`] closes it.
//!
//! The transaction goes through diesel-async's transaction manager, so a connection dropped
//! while one is open counts as broken and the pool discards it instead of lending it out inside
//! the transaction.

use diesel::QueryResult;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

/// Opens the snapshot (see the module doc). Its transaction may sit idle between statements
/// for up to two minutes (a reader that pauses) whatever the server's
/// `idle_in_transaction_session_timeout`.
pub async fn begin(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    use diesel_async::RunQueryDsl;
    AnsiTransactionManager::begin_transaction_sql(
        conn,
        "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
    .await?;
    diesel::sql_query("SET LOCAL idle_in_transaction_session_timeout = '120s'")
        .execute(conn)
        .await
        .map(|_| ())
}

/// Closes the snapshot (it changed nothing: a rollback).
pub async fn end(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    AnsiTransactionManager::rollback_transaction(conn).await
}

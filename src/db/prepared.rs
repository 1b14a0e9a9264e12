//! Raw SQL that PostgreSQL prepares once per connection.
//!
//! diesel never caches the statements of `sql_query`, because their text may be built at run
//! time; diesel-async then prepares every one afresh: a Parse/Describe round trip and a fresh
//! parse before each execution. The hot path (allocation batches, job claims) runs a handful of
//! fixed statements thousands of times a second, so it marks them with [`Prepare::prepared`]:
//! the connection's statement cache keys them by their text and bind types and reuses the
//! prepared statement.
//!
//! Only mark statements whose text is one of a few fixed strings (a `&'static str`, or a
//! `format!` over a closed set of variants); every distinct text stays in each connection's
//! cache for the life of the connection.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

/// A query whose prepared statement the connection may cache (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Prepared<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    // No static id: the cache keys the statement by its SQL text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

/// Adds `.prepared()` to raw SQL queries.
pub trait Prepare: Sized {
    /// Lets the connection prepare this statement once and reuse it.
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q: QueryFragment<Pg>> Prepare for Q {}

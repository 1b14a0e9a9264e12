-- The dead letters of a space's accounts, listed by id (GET …/dead-letters). Built
-- CONCURRENTLY (no transaction: metadata.toml) so the dispatcher keeps writing meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_dead_by_account ON jobs (account_id, id)
    WHERE state = 'dead';

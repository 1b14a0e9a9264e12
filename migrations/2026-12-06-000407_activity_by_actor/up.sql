-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing while the previous release serves during an upgrade (docs/deploying.md).
-- The activity log's filters (GET /v1/spaces/{space}/activity; src/ledger/activity.rs explains
-- which filter walks which index).
-- Callers' rows; Apple's results (by `system`) skip it. Allocations (by their caller) do not.
CREATE INDEX CONCURRENTLY IF NOT EXISTS activity_by_actor ON activity_log (space_id, actor, id)
    WHERE actor <> 'system';

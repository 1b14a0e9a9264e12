-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing while the previous release serves during an upgrade (docs/deploying.md).
-- The activity log's filters (GET /v1/spaces/{space}/activity; src/ledger/activity.rs explains
-- which filter walks which index).
CREATE INDEX CONCURRENTLY IF NOT EXISTS activity_by_request ON activity_log (request_id, id)
    WHERE request_id IS NOT NULL;

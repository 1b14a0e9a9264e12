-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing while the previous release serves during an upgrade (docs/deploying.md).
-- The activity log's filters (GET /v1/spaces/{space}/activity; src/ledger/activity.rs explains
-- which filter walks which index).
CREATE INDEX CONCURRENTLY IF NOT EXISTS activity_by_subject ON activity_log (space_id, subject, id)
    WHERE subject IS NOT NULL;

-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing while the previous release serves during an upgrade (docs/deploying.md).
-- The activity log's filters (GET /v1/spaces/{space}/activity; src/ledger/activity.rs explains
-- which filter walks which index).
-- Every action but the two every allocation writes (ActivityAction::FREQUENT): those are walked
-- over activity_by_space, and allocations do not pay for this index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS activity_rare_actions ON activity_log (space_id, action, id)
    WHERE action NOT IN ('assignment.allocated', 'assignment.activated');

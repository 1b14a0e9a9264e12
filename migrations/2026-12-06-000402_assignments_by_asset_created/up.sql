-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing while the previous release serves during an upgrade (docs/deploying.md).
-- One asset's daily movement in a space (allocations by created_at; revocations are filtered
-- from the same range).
CREATE INDEX CONCURRENTLY IF NOT EXISTS assignments_by_asset_created
    ON assignments (space_id, adam_id, pricing_param, created_at);

-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing while the previous release serves during an upgrade (docs/deploying.md).
-- The license inventory (GET …/assets): counts of a page's assets in transient states (small:
-- settled licenses leave it; `active` is derived from assets.held).
CREATE INDEX CONCURRENTLY IF NOT EXISTS assignments_transient_by_asset
    ON assignments (adam_id, pricing_param, account_id, state)
    WHERE state IN ('pending', 'associating', 'revoking');

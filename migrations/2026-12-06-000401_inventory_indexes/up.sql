-- The license inventory (GET …/assets): counts of a page's assets in transient states (small:
-- settled licenses leave it; `active` is derived from assets.held), and one asset's daily
-- movement in a space (allocations by created_at; revocations are filtered from the same range).
CREATE INDEX assignments_transient_by_asset
    ON assignments (adam_id, pricing_param, account_id, state)
    WHERE state IN ('pending', 'associating', 'revoking');
CREATE INDEX assignments_by_asset_created
    ON assignments (space_id, adam_id, pricing_param, created_at);

DROP INDEX IF EXISTS assignments_by_asset_created;
DROP INDEX IF EXISTS assignments_transient_by_asset;

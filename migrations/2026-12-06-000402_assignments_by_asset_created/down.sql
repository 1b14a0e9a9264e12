DROP INDEX CONCURRENTLY IF EXISTS assignments_by_asset_created;

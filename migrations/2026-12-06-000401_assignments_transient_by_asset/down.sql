DROP INDEX CONCURRENTLY IF EXISTS assignments_transient_by_asset;

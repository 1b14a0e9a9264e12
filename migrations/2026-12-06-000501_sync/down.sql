DROP TABLE plan_items;
DROP TABLE plans;
DROP TABLE drift_items;
DROP INDEX jobs_sync_ready;
DROP INDEX jobs_one_sync_per_account;
ALTER TABLE subjects DROP COLUMN last_seen_at;
ALTER TABLE assets DROP COLUMN vanished_at;
ALTER TABLE accounts DROP COLUMN assets_version_id, DROP COLUMN users_version_id,
    DROP COLUMN last_sync_attempt_at;
DROP TABLE sync_runs;
DROP TABLE apple_assignments;

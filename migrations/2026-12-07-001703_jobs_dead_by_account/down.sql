DROP INDEX IF EXISTS jobs_dead_by_account;

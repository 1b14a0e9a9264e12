DROP INDEX IF EXISTS jobs_by_assignment;

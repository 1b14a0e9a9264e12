DROP INDEX IF EXISTS jobs_poll_by_event;

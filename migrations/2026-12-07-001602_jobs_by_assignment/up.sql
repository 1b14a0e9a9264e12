-- Jobs are looked up by assignment: the submissions' "is its release queued" check (per row of
-- a claimed batch), dropping the releases of failed associations, the repair. Without an index,
-- each was a scan of the job table, which holds one row per queued association.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_by_assignment ON jobs (assignment_id)
    WHERE assignment_id IS NOT NULL;

-- Dead letters (issue 10): an Apple job that failed `VPP_JOB_MAX_ATTEMPTS` times is set aside
-- (`state = 'dead'`, which the schema allowed from the start) instead of being retried forever;
-- `dead_at` says when. Adding a nullable column without a default is a catalog change only.
ALTER TABLE jobs ADD COLUMN dead_at timestamptz;

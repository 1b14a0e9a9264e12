-- Dead letters (issue 10): an Apple job that failed `VPP_JOB_MAX_ATTEMPTS` times is set aside
-- (`state = 'dead'`, which the schema allowed from the start) instead of being retried forever;
-- `dead_at` says when. `failures` counts failed attempts only (`attempts` counts every claim,
-- a pending event's polls and waits for a throttled account included). Both are catalog
-- changes only (no default, or a constant one): the table is not rewritten.
ALTER TABLE jobs ADD COLUMN dead_at timestamptz,
                 ADD COLUMN failures integer NOT NULL DEFAULT 0;

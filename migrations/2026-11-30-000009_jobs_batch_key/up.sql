-- Apple work carries its batch key (asset, pricing, license type), copied from its assignment
-- when it is queued: finding due batches then reads the job table alone. With the key only in
-- `assignments`, each look for work joined the two tables (24 ms over 19,000 queued jobs, ten
-- times a second per process during a burst), and that competed with allocations for CPU.
-- Nullable: event polls and other jobs have no asset. Expand-only: old code ignores them.
ALTER TABLE jobs
    ADD COLUMN adam_id       text,
    ADD COLUMN pricing_param text,
    ADD COLUMN license_type  text;
UPDATE jobs j
   SET adam_id = a.adam_id, pricing_param = a.pricing_param, license_type = a.license_type
  FROM assignments a
 WHERE a.id = j.assignment_id AND j.state = 'queued';

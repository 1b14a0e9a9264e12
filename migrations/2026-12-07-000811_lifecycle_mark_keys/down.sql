ALTER TABLE lifecycle_marks DROP COLUMN IF EXISTS event_key;
ALTER TABLE lifecycle_marks DROP COLUMN IF EXISTS event_source;
UPDATE lifecycle_marks SET occurred_at = 'epoch'::timestamptz WHERE occurred_at IS NULL;
ALTER TABLE lifecycle_marks ALTER COLUMN occurred_at SET NOT NULL;

-- Lifecycle marks (V5) fixes: a subject and aspect no event was applied to yet has no time
-- (NULL, instead of the Unix epoch, which made events before 1970 never stale), and a mark
-- keeps the key (source, id) of the event that set it, so a replay of that very event after
-- the 30-day event retention is recognised as a duplicate (stale) instead of applied again.
ALTER TABLE lifecycle_marks ALTER COLUMN occurred_at DROP NOT NULL;
UPDATE lifecycle_marks SET occurred_at = NULL WHERE occurred_at = 'epoch'::timestamptz;
ALTER TABLE lifecycle_marks ADD COLUMN event_source text;
ALTER TABLE lifecycle_marks ADD COLUMN event_key text;
UPDATE lifecycle_marks m SET event_source = e.source, event_key = e.event_id
  FROM lifecycle_events e WHERE e.id = m.event;

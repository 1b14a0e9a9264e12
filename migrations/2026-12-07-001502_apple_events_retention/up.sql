-- Housekeeping forgets Apple events finished more than 30 days ago (issue 10: the table grew
-- forever). The activity log keeps each assignment's outcome with its Apple event id.
CREATE INDEX apple_events_finished ON apple_events (finished_at) WHERE finished_at IS NOT NULL;

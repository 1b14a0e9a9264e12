-- A finished Apple event's polls are dropped by event id (`ledger::jobs::delete_polls`, once per
-- Apple request) and looked up by the repair (`ledger::repairs::poll_queued`): without an index,
-- each was a sequential scan of the job table, which holds one row per queued association
-- (3-8 ms per call under an allocation storm).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_poll_by_event ON jobs ((payload ->> 'event_id'))
    WHERE kind = 'poll_event';

-- The activity log is the events' outbox (issue 15, rule N5; docs/events.md). Every activity
-- row records the transaction that wrote it (`txid`, the top-level xid8: a default, so no writer
-- changes and the hot path writes nothing more), and rows about an assignment the `version`
-- the change gave it (consumers of events drop stale ones by it).
--
-- `ADD COLUMN` without a default then `SET DEFAULT`: no table rewrite; rows written before
-- keep NULL (long finished: they never become events).
ALTER TABLE activity_log ADD COLUMN txid xid8;
ALTER TABLE activity_log ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
ALTER TABLE activity_log ADD COLUMN version bigint;

-- The sequencer's position in the activity log, `(txid, activity_id)`: every row at or before
-- it has been turned into events (or was not event-worthy). One row; the sequencer locks it
-- (one sequencer at a time across replicas) and moves it in the transaction that appends the
-- events.
CREATE TABLE event_watermark (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),
    txid        xid8        NOT NULL DEFAULT '0',
    activity_id bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO event_watermark DEFAULT VALUES;

-- The event feed's and the webhooks' one source (issue 15, rule N5). Each row is one event of
-- one space, numbered by `sequence` (strictly increasing per space, assigned by the one writer
-- that appends events: `ledger::events::append`). Kept 30 days (retention), then forgotten:
-- the activity log is the permanent history; this is the delivery window. No foreign key to
-- spaces: events outlive what they describe until retention forgets them (H1).
CREATE TABLE events (
    space_id    text        NOT NULL,
    sequence    bigint      NOT NULL,
    id          uuid        NOT NULL UNIQUE,
    type        text        NOT NULL,
    api_version text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    activity_id bigint,
    data        jsonb       NOT NULL,
    PRIMARY KEY (space_id, sequence)
);
CREATE INDEX events_by_recorded_at ON events (recorded_at);

-- The last sequence number given out per space.
CREATE TABLE event_sequences (
    space_id text   PRIMARY KEY,
    last     bigint NOT NULL
);

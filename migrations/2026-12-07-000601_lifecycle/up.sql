-- Lifecycle events from other MDM components (rules V2, V3, V5; issue 14): the events as
-- received (idempotent by space, source and id; kept 30 days), the newest applied time per
-- subject and aspect (out-of-order delivery is `stale`), and each space's effect per type.
CREATE TABLE lifecycle_events (
    id uuid PRIMARY KEY,
    space_id text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    source text NOT NULL,
    event_id text NOT NULL,
    type text NOT NULL,
    subject_kind text NOT NULL CHECK (subject_kind IN ('device', 'user', 'asset')),
    subject_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    effect text NOT NULL CHECK (effect IN ('revoke_now', 'revoke_after', 'ignore', 'record')),
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'scheduled', 'applied', 'stale', 'failed')),
    due_at timestamptz NOT NULL,
    -- effect `revoke_after`: when the revocation is due (occurred_at + the grace period).
    revoke_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    result jsonb,
    requested_by text NOT NULL,
    request_id text,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at timestamptz,
    UNIQUE (space_id, source, event_id)
);
-- The worker's claim: due work, oldest first.
CREATE INDEX lifecycle_events_due ON lifecycle_events (due_at, occurred_at)
    WHERE state IN ('queued', 'scheduled');
-- The 30-day retention.
CREATE INDEX lifecycle_events_received ON lifecycle_events (received_at);

CREATE TABLE lifecycle_marks (
    space_id text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    subject_kind text NOT NULL,
    subject_id text NOT NULL,
    aspect text NOT NULL,
    occurred_at timestamptz NOT NULL,
    event uuid,
    PRIMARY KEY (space_id, subject_kind, subject_id, aspect)
);

CREATE TABLE lifecycle_settings (
    space_id text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    event_type text NOT NULL,
    effect text NOT NULL CHECK (effect IN ('revoke_now', 'revoke_after', 'ignore')),
    grace_seconds integer CHECK (grace_seconds IS NULL OR grace_seconds BETWEEN 1 AND 31536000),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (space_id, event_type),
    CHECK ((effect = 'revoke_after') = (grace_seconds IS NOT NULL))
);

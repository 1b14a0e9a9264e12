-- One license held by one subject for one asset from one account: the ledger row.
-- Life cycle: pending -> associating -> active | failed; active -> revoking -> revoked.
CREATE TABLE assignments (
    id             uuid PRIMARY KEY,
    space_id       text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    account_id     uuid NOT NULL,
    adam_id        text NOT NULL,
    pricing_param  text NOT NULL,
    subject_id     uuid NOT NULL REFERENCES subjects (id) ON DELETE RESTRICT,
    license_type   text NOT NULL CHECK (license_type IN ('device', 'user')),
    state          text NOT NULL DEFAULT 'pending' CHECK (state IN (
                       'pending', 'associating', 'active', 'failed', 'revoking', 'revoked')),
    -- Which rule decided (A1 priority, A2 reservation, A4 fallback ...) and the skipped accounts.
    rule           text NOT NULL,
    decision       jsonb NOT NULL DEFAULT '{}',
    requested_by   text NOT NULL,
    reason         text NOT NULL DEFAULT '',
    apple_event_id text,
    batch_id       uuid,
    error          jsonb,
    version        bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account_id, adam_id, pricing_param)
        REFERENCES assets (account_id, adam_id, pricing_param) ON DELETE CASCADE
);
-- At most one live (license-holding) assignment per space, asset and subject.
CREATE UNIQUE INDEX assignments_one_live
    ON assignments (space_id, adam_id, pricing_param, subject_id)
    WHERE state IN ('pending', 'associating', 'active');
-- The dispatcher looks for work per account.
CREATE INDEX assignments_work ON assignments (account_id, state)
    WHERE state IN ('pending', 'associating', 'revoking');
CREATE INDEX assignments_by_subject ON assignments (subject_id);
CREATE INDEX assignments_by_event ON assignments (apple_event_id) WHERE apple_event_id IS NOT NULL;
CREATE INDEX assignments_by_space ON assignments (space_id, id);

-- Apple's asynchronous events this service submitted, followed to completion (rule T10).
CREATE TABLE apple_events (
    event_id      text PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('associate', 'disassociate', 'create_users')),
    adam_id       text,
    pricing_param text,
    requested     integer NOT NULL DEFAULT 0,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'complete', 'failed')),
    failures      jsonb,
    polls         integer NOT NULL DEFAULT 0,
    submitted_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX apple_events_pending ON apple_events (account_id) WHERE status = 'pending';

-- Users registered with Apple per account (user-based licenses need a registered clientUserId).
CREATE TABLE apple_users (
    account_id     uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    client_user_id text NOT NULL,
    status         text NOT NULL CHECK (status IN ('registering', 'registered', 'failed')),
    event_id       text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, client_user_id)
);

-- Apple notifications already processed (Apple may deliver one more than once).
CREATE TABLE apple_notifications (
    notification_id text PRIMARY KEY,
    account_id      uuid,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX apple_notifications_age ON apple_notifications (received_at);

-- Reservations name individual devices or users (a group's size is unknown, so it cannot hold
-- licenses back); groups take first-come-first-served licenses or are disallowed.
ALTER TABLE policy_entries
    ADD CONSTRAINT policy_entries_reserved_individuals CHECK (mode <> 'reserved' OR target_kind <> 'group');

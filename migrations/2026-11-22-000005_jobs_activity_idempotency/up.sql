-- Background work (Apple calls, syncs, webhooks), claimed with FOR UPDATE SKIP LOCKED and held
-- by a lease: a replica that dies loses its lease and another replica takes the job over.
-- Apple work is one job per assignment (associate / disassociate), so enqueueing never contends
-- with other allocations; the dispatcher claims an account's jobs together and batches them.
CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL,
    account_id   uuid REFERENCES accounts (id) ON DELETE CASCADE,
    assignment_id uuid,
    payload      jsonb NOT NULL DEFAULT '{}',
    -- Jobs with the same dedupe key are coalesced while one is waiting.
    dedupe_key   text,
    state        text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'dead')),
    run_at       timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    locked_by    text,
    locked_until timestamptz,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX jobs_dedupe ON jobs (dedupe_key) WHERE dedupe_key IS NOT NULL AND state = 'queued';
CREATE INDEX jobs_ready ON jobs (run_at) WHERE state = 'queued';
CREATE INDEX jobs_by_account ON jobs (account_id, id) WHERE state = 'queued';

-- Every decision and state change: who asked, which account, which rule, Apple event id.
CREATE TABLE activity_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    space_id       text,
    actor          text NOT NULL,
    action         text NOT NULL,
    account_id     uuid,
    assignment_id  uuid,
    subject        text,
    adam_id        text,
    pricing_param  text,
    rule           text,
    apple_event_id text,
    request_id     text,
    details        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX activity_by_space ON activity_log (space_id, id);
CREATE INDEX activity_by_account ON activity_log (account_id, id) WHERE account_id IS NOT NULL;

-- Idempotency-Key replay store: the first response to (space, caller, key) is kept and replayed.
CREATE TABLE idempotency_keys (
    space_id            text NOT NULL,
    caller              text NOT NULL,
    key                 text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    request_fingerprint bytea NOT NULL,
    status_code         integer,
    response_body       jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (space_id, caller, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

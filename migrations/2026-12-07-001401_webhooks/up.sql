-- Signed webhooks (issue 15, rules N3, N6).
--
-- webhook_endpoints: one subscriber of a space. Its secret is sealed like an sToken (AES-GCM,
-- key id + nonce + ciphertext; the endpoint id is bound in). After a rotation the previous
-- secret also signs until `previous_until`. `last_sequence` is the fan-out cursor: the events
-- of the space up to it have been turned into deliveries. Deleting an endpoint only stamps
-- `deleted_at` (its delivery log stays for its retention; nothing is lost to a cascade).
CREATE TABLE webhook_endpoints (
    id                  uuid        PRIMARY KEY,
    space_id            text        NOT NULL,
    url                 text        NOT NULL,
    event_types         text[]      NOT NULL DEFAULT '{}',
    description         text        NOT NULL DEFAULT '',
    enabled             boolean     NOT NULL DEFAULT true,
    disabled_reason     text,
    disabled_at         timestamptz,
    secret_key_id       text        NOT NULL,
    secret_nonce        bytea       NOT NULL,
    secret_ciphertext   bytea       NOT NULL,
    previous_key_id     text,
    previous_nonce      bytea,
    previous_ciphertext bytea,
    previous_until      timestamptz,
    last_sequence       bigint      NOT NULL DEFAULT 0,
    failing_since       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz
);
CREATE INDEX webhook_endpoints_by_space ON webhook_endpoints (space_id, created_at, id)
    WHERE deleted_at IS NULL;

-- The delivery queue: one row per (endpoint, event) still to send, claimed with
-- FOR UPDATE SKIP LOCKED; a claim moves `run_at` past the lease, so a killed sender's rows come
-- due again (at least once). Deleted when delivered or given up.
CREATE TABLE webhook_deliveries (
    id          bigserial   PRIMARY KEY,
    endpoint_id uuid        NOT NULL,
    space_id    text        NOT NULL,
    sequence    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    run_at      timestamptz NOT NULL DEFAULT now(),
    locked_by   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (run_at);

-- The delivery log: one row per attempt, kept VPP_WEBHOOK_LOG_RETENTION_DAYS (30) days.
CREATE TABLE webhook_attempts (
    id              bigserial   PRIMARY KEY,
    endpoint_id     uuid        NOT NULL,
    space_id        text        NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    sequence        bigint,
    attempt         integer     NOT NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    delivered       boolean     NOT NULL,
    status          integer,
    latency_ms      integer     NOT NULL,
    response        text,
    error           text,
    next_attempt_at timestamptz
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_by_time ON webhook_attempts (attempted_at);

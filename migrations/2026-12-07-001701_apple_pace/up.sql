-- One Apple request budget per sToken across every replica (rule T13): `maxRequestPerSecond`
-- slots per token. A request holds a slot from just before it is sent until it ended (at most
-- a lease), and the slot frees a pacing window after the request was sent, or when it ended
-- if later (ledger::apple_pace; times by the database's clock). Keys are SHA-256 digests of
-- the token, never its text. Rows of a token idle for a day are forgotten by housekeeping and
-- made again on its next request.
CREATE TABLE apple_pace (
    token_key bytea NOT NULL,
    slot integer NOT NULL,
    free_at timestamptz NOT NULL DEFAULT 'epoch',
    PRIMARY KEY (token_key, slot)
);

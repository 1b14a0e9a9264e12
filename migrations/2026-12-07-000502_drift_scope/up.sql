-- What a sync must write and recompute (docs/sync.md, "Only what changed"). Both tables are
-- caches of Apple's side (like the mirror), not history: they go with their account.

-- Per account and asset: when its mirror rows last changed (a sync inserted or deleted some, or a
-- confirmed release took one out) and a digest of them (NULL: not known). Every asset with mirror
-- rows has a row here.
CREATE TABLE mirror_assets (
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    adam_id       text NOT NULL,
    pricing_param text NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now(),
    digest        bytea,
    PRIMARY KEY (account_id, adam_id, pricing_param)
);
INSERT INTO mirror_assets (account_id, adam_id, pricing_param)
SELECT DISTINCT account_id, adam_id, pricing_param FROM apple_assignments;

-- Per account: the watermarks of the last drift report.
CREATE TABLE drift_watermarks (
    account_id uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    -- The read start of the run that last recomputed the report: ledger rows changed since
    -- (less a margin) make their asset part of the next run's scope.
    ledger_at  timestamptz NOT NULL,
    -- When that run fixed its scope: mirror changes since make their asset part of the next.
    mirror_at  timestamptz NOT NULL,
    -- Whether that run was a stable full read (it recomputed `ledger_only`).
    full_read  boolean NOT NULL,
    -- Whether that run read the asset list (it judged `count_mismatch`).
    assets_read boolean NOT NULL
);

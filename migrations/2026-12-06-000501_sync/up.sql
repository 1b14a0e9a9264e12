-- Keeping the ledger true to Apple (issue 13, rules T4, T5, T6, T11, T12; docs/sync.md).

-- Apple's assignments of each account as the last sync read them: a cache of Apple's side, not
-- history (what changed is in `sync_runs`, the drift report and the activity log), so it goes
-- with its account. Full syncs replace an account's rows (those not seen by the run go);
-- incremental syncs add and update rows (Apple does not document how a delta reports removals,
-- so removals are found by the next full sync).
CREATE TABLE apple_assignments (
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    adam_id       text NOT NULL,
    pricing_param text NOT NULL,
    license_type  text NOT NULL CHECK (license_type IN ('device', 'user')),
    -- The serial number (device) or client user id (user) Apple lists.
    target        text NOT NULL,
    -- When a sync first saw it (kept while Apple keeps listing it).
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    -- When it was recorded, and the run that found it (rows are not rewritten while Apple
    -- keeps listing them: a full sync of an unchanged location writes nothing).
    seen_at       timestamptz NOT NULL DEFAULT now(),
    seen_by_run   uuid NOT NULL,
    PRIMARY KEY (account_id, adam_id, pricing_param, license_type, target)
);
-- A subject's licenses at Apple (allocation's "already assigned at Apple" lookup, adoption).
CREATE INDEX apple_assignments_by_target ON apple_assignments (account_id, license_type, target);

-- One sync of one account: the resource `POST …/sync` answers and the scheduler creates. The
-- work itself is a `jobs` row of kind `sync` (payload `{"run_id": …}`), one per account at a
-- time. Runs are history: they outlive their account (no foreign key, like `activity_log`).
CREATE TABLE sync_runs (
    id              uuid PRIMARY KEY,
    space_id        text NOT NULL,
    account_id      uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('full', 'incremental')),
    -- What asked for it: the schedule, an attach, a token replacement, a caller (manual).
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'attach', 'token_replaced', 'manual')),
    requested_by    text NOT NULL,
    request_id      text,
    state           text NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    -- Apple requests made and pages read by the attempt that finished (or the current one).
    requests        integer NOT NULL DEFAULT 0,
    pages_read      integer NOT NULL DEFAULT 0,
    -- What the run found and changed (`SyncStats` in the code).
    stats           jsonb NOT NULL DEFAULT '{}',
    -- Drift found, per class (`{"apple_only": 3, …}`).
    drift           jsonb NOT NULL DEFAULT '{}',
    -- Why it failed, or the last transient error of a run being retried.
    error           jsonb,
    -- Apple's versionIds: assignments before / after (the next incremental reads since after).
    version_before  text,
    version_after   text
);
CREATE INDEX sync_runs_by_account ON sync_runs (account_id, requested_at DESC);

ALTER TABLE accounts
    -- The assets list's versionId at the last sync: an incremental sync whose first page
    -- carries the same one reads no further page.
    ADD COLUMN assets_version_id text,
    -- The users list's versionId at the last sync.
    ADD COLUMN users_version_id text,
    -- When the last sync of any kind ended, whatever its outcome (the scheduler waits the
    -- incremental interval after a failed run before trying again).
    ADD COLUMN last_sync_attempt_at timestamptz;

-- An asset Apple no longer lists (a transfer, a refund of every license): its counts are zero
-- and it stays for the ledger's history; it comes back when Apple lists it again.
ALTER TABLE assets ADD COLUMN vanished_at timestamptz;

-- When the MDM last saw the subject (fed by the lifecycle events of issue 14); Reconcile's
-- "not seen for N days" criterion reads it and is off while it is unknown.
ALTER TABLE subjects ADD COLUMN last_seen_at timestamptz;

-- One sync job per account at a time, across all replicas.
CREATE UNIQUE INDEX jobs_one_sync_per_account ON jobs (account_id) WHERE kind = 'sync';
CREATE INDEX jobs_sync_ready ON jobs (run_at) WHERE kind = 'sync' AND state = 'queued';

-- The differences the last sync of each account found (the drift report). Recomputed at the end
-- of every sync: items that persist keep their `since`, items no longer found go. A derived
-- report (its history is `sync_runs.drift` and the activity of the actions taken), so it goes
-- with its account.
CREATE TABLE drift_items (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    space_id      text NOT NULL,
    class         text NOT NULL CHECK (class IN (
                      'apple_only', 'ledger_only', 'stuck', 'count_mismatch', 'overcommitted')),
    adam_id       text NOT NULL,
    pricing_param text NOT NULL,
    -- The subject (per-license classes); NULL for the per-asset classes.
    license_type  text CHECK (license_type IN ('device', 'user')),
    target        text,
    -- The ledger's assignment (ledger_only, stuck).
    assignment_id uuid,
    -- When a sync first found it.
    since         timestamptz NOT NULL,
    found_by_run  uuid NOT NULL,
    -- Class-specific facts: counts (count_mismatch, overcommitted), state (stuck).
    details       jsonb NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX drift_items_key ON drift_items
    (account_id, class, adam_id, pricing_param, COALESCE(license_type, ''), COALESCE(target, ''));
CREATE INDEX drift_items_by_space ON drift_items (space_id, id);

-- Acting on drift (Adopt, Clean Up, Repair) and Reconcile: planned first, applied by id within
-- the hour. Plans and their items are history (no foreign key to accounts).
CREATE TABLE plans (
    id            uuid PRIMARY KEY,
    space_id      text NOT NULL,
    -- NULL: every account of the space.
    account_id    uuid,
    action        text NOT NULL CHECK (action IN ('adopt', 'clean_up', 'repair', 'reconcile')),
    -- What the caller asked (filters, repair choice, limit).
    options       jsonb NOT NULL DEFAULT '{}',
    state         text NOT NULL DEFAULT 'planned' CHECK (state IN ('planned', 'applied')),
    created_by    text NOT NULL,
    request_id    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    -- How many changes the run may make, how many were candidates, whether items were cut.
    cap           integer NOT NULL,
    candidates    integer NOT NULL,
    applied_at    timestamptz,
    applied_by    text,
    -- Counts of the apply (`{"applied": n, "skipped": m}`).
    outcome       jsonb
);
CREATE INDEX plans_by_space ON plans (space_id, created_at DESC);

CREATE TABLE plan_items (
    plan_id       uuid NOT NULL REFERENCES plans (id),
    seq           integer NOT NULL,
    account_id    uuid NOT NULL,
    -- What applying it does (`PlanChange` in the code).
    change        text NOT NULL,
    adam_id       text NOT NULL,
    pricing_param text NOT NULL,
    license_type  text NOT NULL CHECK (license_type IN ('device', 'user')),
    target        text NOT NULL,
    assignment_id uuid,
    -- Why it is planned (the drift class, or Reconcile's criterion), for people.
    reason        text NOT NULL,
    -- Set by the apply: `applied` or `skipped`, and why skipped.
    outcome       text CHECK (outcome IN ('applied', 'skipped')),
    outcome_reason text,
    PRIMARY KEY (plan_id, seq)
);

-- Who a license is for: a device (serial number) or a user (client user id).
-- Group memberships are what the calling MDM told us; the MDM owns the directory.
CREATE TABLE subjects (
    id           uuid PRIMARY KEY,
    space_id     text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    kind         text NOT NULL CHECK (kind IN ('device', 'user')),
    external_id  text NOT NULL CHECK (char_length(external_id) BETWEEN 1 AND 256),
    groups       text[] NOT NULL DEFAULT '{}',
    -- For devices: the client user id of the device's user (rule A7).
    user_external_id text CHECK (user_external_id IS NULL OR kind = 'device'),
    shared_ipad  boolean NOT NULL DEFAULT false CHECK (NOT shared_ipad OR kind = 'device'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subjects_unique UNIQUE (space_id, kind, external_id)
);

-- Distribution policy per space and asset.
CREATE TABLE distribution_policies (
    id            uuid PRIMARY KEY,
    space_id      text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    adam_id       text NOT NULL CHECK (adam_id ~ '^[0-9]{1,20}$'),
    pricing_param text NOT NULL CHECK (pricing_param IN ('STDQ', 'PLUS')),
    version       bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT distribution_policies_unique UNIQUE (space_id, adam_id, pricing_param)
);

-- One row per subject or group named by a policy. The primary key makes a subject appear in
-- at most one mode per policy. Reservations may name the account to reserve from.
CREATE TABLE policy_entries (
    policy_id   uuid NOT NULL REFERENCES distribution_policies (id) ON DELETE CASCADE,
    target_kind text NOT NULL CHECK (target_kind IN ('device', 'user', 'group')),
    target      text NOT NULL CHECK (char_length(target) BETWEEN 1 AND 256),
    mode        text NOT NULL CHECK (mode IN ('reserved', 'fcfs', 'disallowed')),
    account_id  uuid REFERENCES accounts (id) ON DELETE RESTRICT,
    PRIMARY KEY (policy_id, target_kind, target),
    CHECK (account_id IS NULL OR mode = 'reserved'),
    CHECK (mode <> 'fcfs' OR target_kind = 'group')
);
CREATE INDEX policy_entries_by_account ON policy_entries (account_id) WHERE account_id IS NOT NULL;

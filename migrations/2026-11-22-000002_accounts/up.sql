-- Token accounts: one Apple location (sToken) each, ordered by priority within a space.
CREATE TABLE accounts (
    id                      uuid PRIMARY KEY,
    space_id                text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    name                    text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    priority                integer NOT NULL CHECK (priority >= 1),
    -- The Apple location, as learned from GET client/config.
    location_uid            text NOT NULL CHECK (location_uid <> ''),
    location_name           text NOT NULL DEFAULT '',
    country_code            text NOT NULL DEFAULT '',
    website_url             text NOT NULL DEFAULT '',
    org_name                text NOT NULL DEFAULT '',
    -- The sToken, AES-256-GCM encrypted; key_id names the key so keys can be rotated.
    token_ciphertext        bytea NOT NULL,
    token_nonce             bytea NOT NULL CHECK (octet_length(token_nonce) = 12),
    token_key_id            text NOT NULL,
    token_expires_at        timestamptz NOT NULL,
    status                  text NOT NULL DEFAULT 'active' CHECK (status IN (
                                'active', 'expiring', 'expired', 'revoked', 'invalid',
                                'login_required', 'not_owned', 'throttled')),
    status_reason           text NOT NULL DEFAULT '',
    status_changed_at       timestamptz NOT NULL DEFAULT now(),
    throttled_until         timestamptz,
    -- mdmInfo.id Apple last reported for this location (ours when owned).
    apple_mdm_id            text,
    -- SHA-256 of the bearer token Apple sends with notifications for this account.
    notification_token_hash bytea,
    -- Settings.
    notify_on_removal       boolean NOT NULL DEFAULT true,
    new_assets_for_everyone boolean NOT NULL DEFAULT true,
    when_unusable           text NOT NULL DEFAULT 'queue' CHECK (when_unusable IN ('queue', 'skip')),
    -- Sync bookkeeping.
    last_full_sync_at       timestamptz,
    last_incremental_sync_at timestamptz,
    assignments_version_id  text,
    -- Set when deletion with revoke-all was requested; the row goes when every license is revoked.
    delete_requested_at     timestamptz,
    version                 bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    -- One Apple location may be attached only once per deployment.
    CONSTRAINT accounts_location_unique UNIQUE (location_uid),
    -- Priorities are unique per space; deferrable so one transaction can permute them.
    CONSTRAINT accounts_priority_unique UNIQUE (space_id, priority) DEFERRABLE INITIALLY IMMEDIATE
);

-- Distribution list of an account: who may receive its licenses when allocation falls back to it.
-- Empty list = everyone in the space.
CREATE TABLE account_distribution_entries (
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('user', 'group', 'device')),
    value       text NOT NULL CHECK (char_length(value) BETWEEN 1 AND 256),
    PRIMARY KEY (account_id, kind, value)
);

-- Assets an account bought, with Apple's counts as last seen and what this service holds.
CREATE TABLE assets (
    account_id          uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    adam_id             text NOT NULL CHECK (adam_id ~ '^[0-9]{1,20}$'),
    pricing_param       text NOT NULL CHECK (pricing_param IN ('STDQ', 'PLUS')),
    product_type        text NOT NULL DEFAULT 'App' CHECK (product_type IN ('App', 'Book', 'Other')),
    device_assignable   boolean NOT NULL DEFAULT true,
    revocable           boolean NOT NULL DEFAULT true,
    supported_platforms text[] NOT NULL DEFAULT '{}',
    -- Apple's counts at the last sync.
    apple_total         integer NOT NULL DEFAULT 0 CHECK (apple_total >= 0),
    apple_assigned      integer NOT NULL DEFAULT 0 CHECK (apple_assigned >= 0),
    apple_retired       integer NOT NULL DEFAULT 0 CHECK (apple_retired >= 0),
    -- Licenses assigned at Apple that this instance did not assign (another MDM, a previous owner).
    foreign_assigned    integer NOT NULL DEFAULT 0 CHECK (foreign_assigned >= 0),
    -- Live assignments in this ledger (pending, associating, active). Allocation only succeeds
    -- through a conditional update that keeps held + foreign_assigned <= apple_total.
    held                integer NOT NULL DEFAULT 0 CHECK (held >= 0),
    synced_at           timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, adam_id, pricing_param)
);
CREATE INDEX assets_by_product ON assets (adam_id, pricing_param);

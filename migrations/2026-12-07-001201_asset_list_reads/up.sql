-- When a sync last read Apple's whole asset list of an account. A sync rewrites only the asset
-- rows whose counts or attributes changed; the others' counts were confirmed then
-- (`assets.synced_at` is when the row itself was last written from Apple). A table of its own:
-- `accounts` is at diesel's 32-column limit. Sync state, not history: it goes with the account.
CREATE TABLE asset_list_reads (
    account_id uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    read_at    timestamptz NOT NULL
);

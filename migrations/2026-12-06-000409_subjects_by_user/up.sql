-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing while the previous release serves during an upgrade (docs/deploying.md).
-- The user view (`GET …/users/{id}`) lists the devices whose user the client user id is: an
-- index on the device's user, so the lookup reads that user's devices only. Devices without a
-- user (most, and every user row) are left out of it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS subjects_by_user
    ON subjects (space_id, user_external_id)
    WHERE user_external_id IS NOT NULL;

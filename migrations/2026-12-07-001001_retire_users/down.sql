-- A retired (or retiring) user is no longer registered: forgetting the row makes the next user
-- license register it again, which is what the old code needs.
DELETE FROM jobs WHERE kind = 'retire_user';
DELETE FROM apple_users WHERE status IN ('retiring', 'retired');
ALTER TABLE apple_users DROP CONSTRAINT apple_users_status_check;
ALTER TABLE apple_users ADD CONSTRAINT apple_users_status_check
    CHECK (status IN ('registering', 'registered', 'failed'));
ALTER TABLE apple_users DROP COLUMN retired_at;

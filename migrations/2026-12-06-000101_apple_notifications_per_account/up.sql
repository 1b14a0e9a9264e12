-- Apple's notification ids are deduplicated per account: one location's ids say nothing about
-- another's (and an id-less notification, stored as '', used to swallow every later one).
-- Rows without an account were never written by the receiver; they cannot be told apart per
-- account, so they go (they are one-day dedupe markers, not audit data).
DELETE FROM apple_notifications WHERE account_id IS NULL;
ALTER TABLE apple_notifications DROP CONSTRAINT apple_notifications_pkey;
ALTER TABLE apple_notifications ALTER COLUMN account_id SET NOT NULL;
ALTER TABLE apple_notifications ADD PRIMARY KEY (account_id, notification_id);

-- A notification refused for its content (e.g. a count out of range) keeps the problem it was
-- answered with ({type, field, message}), so Apple's retries get the same answer without being
-- applied. The refusal itself is also in the activity log.
ALTER TABLE apple_notifications ADD COLUMN rejection jsonb;

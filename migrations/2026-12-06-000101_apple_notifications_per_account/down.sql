ALTER TABLE apple_notifications DROP COLUMN rejection;
-- Back to one row per id: keep the earliest of each id.
DELETE FROM apple_notifications a
 USING apple_notifications b
 WHERE a.notification_id = b.notification_id
   AND (a.received_at, a.account_id) > (b.received_at, b.account_id);
ALTER TABLE apple_notifications DROP CONSTRAINT apple_notifications_pkey;
ALTER TABLE apple_notifications ALTER COLUMN account_id DROP NOT NULL;
ALTER TABLE apple_notifications ADD PRIMARY KEY (notification_id);

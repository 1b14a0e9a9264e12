ALTER TABLE policy_entries DROP CONSTRAINT policy_entries_reserved_individuals;
DROP TABLE apple_notifications;
DROP TABLE apple_users;
DROP TABLE apple_events;

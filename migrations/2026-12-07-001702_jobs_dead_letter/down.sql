ALTER TABLE jobs DROP COLUMN dead_at, DROP COLUMN failures;

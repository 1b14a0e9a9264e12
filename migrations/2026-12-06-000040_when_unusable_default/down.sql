UPDATE accounts SET when_unusable = 'queue' WHERE when_unusable = 'queue_when_throttled';
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_when_unusable_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_when_unusable_check
    CHECK (when_unusable IN ('queue', 'skip'));
ALTER TABLE accounts ALTER COLUMN when_unusable SET DEFAULT 'queue';

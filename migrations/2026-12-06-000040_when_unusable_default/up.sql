-- A10's default: queue only behind Apple's Retry-After; skip accounts that stay unusable until
-- someone acts. Existing accounts keep the value they have (it may have been chosen).
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_when_unusable_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_when_unusable_check
    CHECK (when_unusable IN ('queue_when_throttled', 'queue', 'skip'));
ALTER TABLE accounts ALTER COLUMN when_unusable SET DEFAULT 'queue_when_throttled';

DROP TRIGGER IF EXISTS waitlist_wake_on_insert ON assets;
DROP TRIGGER IF EXISTS waitlist_wake_on_update ON assets;
DROP FUNCTION IF EXISTS waitlist_wake();
DROP TABLE IF EXISTS waitlist_wakeups;
DROP TABLE IF EXISTS waitlist;
-- Waiting assignments held no license: they end as cancelled before the state goes.
UPDATE assignments SET state = 'revoked', revocation_reason = 'wait-list removed'
 WHERE state = 'waiting';
ALTER TABLE assignments DROP CONSTRAINT IF EXISTS assignments_state_check;
ALTER TABLE assignments ADD CONSTRAINT assignments_state_check CHECK (state IN (
    'pending', 'associating', 'active', 'failed', 'revoking', 'revoked'));

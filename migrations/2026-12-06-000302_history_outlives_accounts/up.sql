-- H1: history is never deleted by a cascade. Assignments referenced their asset row with
-- ON DELETE CASCADE, so deleting an account (assets cascade from accounts) or forgetting a
-- replaced token's location deleted every assignment of the account, revoked and failed ones
-- included.
--
-- The reference is dropped rather than turned into ON DELETE SET NULL or kept alive by
-- soft-deleted account rows:
-- - SET NULL would erase which account served the license, which is the history being kept
--   (and `account_id` is part of the asset key, so the whole reference would go NULL);
-- - soft-deleted accounts (and their asset rows) would have to be filtered out of every
--   account, allocation and dispatch query, keep their Apple location taken, and still not cover
--   a token replacement, which forgets the old location's assets while the account lives on.
-- `account_id`, `adam_id` and `pricing_param` stay as recorded facts, as in `activity_log`.
-- Live assignments still always have their asset row: allocation writes them through the
-- guarded `held` update of that row in the same statement, an account is removed only once
-- none of its assignments is live or at Apple, and forgetting a location finishes the live
-- ones (state `revoked`, with the reason) before its assets go.
ALTER TABLE assignments DROP CONSTRAINT IF EXISTS assignments_account_id_adam_id_pricing_param_fkey;
-- The assignment listing filters by account, also after the account is gone.
CREATE INDEX IF NOT EXISTS assignments_by_account ON assignments (account_id, id);

-- Reverting restores the cascading reference; assignments whose asset row is gone (history of
-- deleted accounts or forgotten locations) cannot satisfy it and are deleted first.
DROP INDEX IF EXISTS assignments_by_account;
DELETE FROM assignments a
 WHERE NOT EXISTS (SELECT 1 FROM assets s
                    WHERE s.account_id = a.account_id AND s.adam_id = a.adam_id
                      AND s.pricing_param = a.pricing_param);
ALTER TABLE assignments
    ADD CONSTRAINT assignments_account_id_adam_id_pricing_param_fkey
    FOREIGN KEY (account_id, adam_id, pricing_param)
    REFERENCES assets (account_id, adam_id, pricing_param) ON DELETE CASCADE;

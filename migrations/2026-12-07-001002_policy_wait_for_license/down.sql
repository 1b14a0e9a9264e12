ALTER TABLE distribution_policies DROP COLUMN wait_for_license;

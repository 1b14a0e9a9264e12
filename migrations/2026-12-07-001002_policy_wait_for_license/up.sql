-- A12 as a policy setting: an allocation of the asset that does not say `wait_for_license` waits
-- for a license when none is left (as if it had said `true`) when its policy says so; a request
-- saying `false` is refused as before. Expand-only: old code ignores the column.
ALTER TABLE distribution_policies ADD COLUMN wait_for_license boolean NOT NULL DEFAULT false;

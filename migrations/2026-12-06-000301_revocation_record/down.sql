ALTER TABLE assignments
    DROP CONSTRAINT IF EXISTS assignments_revocation_recorded,
    DROP COLUMN IF EXISTS revoked_by,
    DROP COLUMN IF EXISTS revocation_reason,
    DROP COLUMN IF EXISTS revocation_requested_at,
    DROP COLUMN IF EXISTS revocation_request_id;

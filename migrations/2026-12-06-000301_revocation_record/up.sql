-- A revocation leaves its record on the assignment: who asked (JWT subject, or `system`), why,
-- when, and the request id. NULL until a revocation is requested. Expand-only: old code
-- ignores the columns.
ALTER TABLE assignments
    ADD COLUMN revoked_by              text,
    ADD COLUMN revocation_reason       text CHECK (char_length(revocation_reason) <= 1000),
    ADD COLUMN revocation_requested_at timestamptz,
    ADD COLUMN revocation_request_id   text,
    ADD CONSTRAINT assignments_revocation_recorded
        CHECK ((revoked_by IS NULL) = (revocation_requested_at IS NULL));

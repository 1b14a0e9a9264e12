-- Bulk operations (rule V6, issue 14): allocate or revoke assets for up to 100,000 subjects as
-- one operation resource with progress and cancel. The subjects are stored with the operation
-- (a selector is resolved when the operation is created); a worker works through them in
-- chunks, advancing `next_index` and the counts in the transaction of each chunk's effects.
CREATE TABLE bulk_operations (
    id uuid PRIMARY KEY,
    space_id text NOT NULL REFERENCES spaces (id) ON DELETE RESTRICT,
    action text NOT NULL CHECK (action IN ('allocate', 'revoke')),
    -- [{adam_id, pricing_param}], 1 to 20.
    assets jsonb NOT NULL,
    -- The selector as given ({group} or {holders_of}); NULL when subjects were listed.
    selector jsonb,
    license_type text NOT NULL DEFAULT 'auto' CHECK (license_type IN ('auto', 'device', 'user')),
    reason text NOT NULL DEFAULT '',
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'succeeded', 'completed_with_errors', 'cancelled',
                         'failed')),
    subjects integer NOT NULL CHECK (subjects >= 0),
    -- Items are (subject, asset) pairs: total = subjects x assets.
    total integer NOT NULL CHECK (total >= 0),
    succeeded integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    skipped integer NOT NULL DEFAULT 0,
    -- Index of the next subject to process (bulk_operation_items.idx).
    next_index integer NOT NULL DEFAULT 0,
    -- A sample of the items' errors (at most 20).
    errors jsonb NOT NULL DEFAULT '[]'::jsonb,
    cancelled_by text,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    requested_by text NOT NULL,
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The worker's claim: unfinished operations, oldest first.
CREATE INDEX bulk_operations_due ON bulk_operations (created_at, id)
    WHERE state IN ('queued', 'running');
-- The list, newest first.
CREATE INDEX bulk_operations_space ON bulk_operations (space_id, created_at DESC, id DESC);

CREATE TABLE bulk_operation_items (
    operation_id uuid NOT NULL REFERENCES bulk_operations (id) ON DELETE RESTRICT,
    idx integer NOT NULL,
    subject_kind text NOT NULL CHECK (subject_kind IN ('device', 'user')),
    subject_id text NOT NULL,
    PRIMARY KEY (operation_id, idx)
);

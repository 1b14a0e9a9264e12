-- A12: the wait-list. An allocation that asked to wait when no license was left is an
-- assignment in state `waiting` (it holds no license: `held` does not count it) with one row
-- in `waitlist`, its place in line. When it is served the row leaves the line and the
-- assignment becomes `pending` (same id); cancelled, it becomes `revoked`; expired, `failed`.
ALTER TABLE assignments DROP CONSTRAINT IF EXISTS assignments_state_check;
ALTER TABLE assignments ADD CONSTRAINT assignments_state_check CHECK (state IN (
    'waiting', 'pending', 'associating', 'active', 'failed', 'revoking', 'revoked'));

-- The line: one row per waiting assignment. `seq` is the order of arrival (first come, first
-- served after the reservations); what the caller asked is kept to decide it again when a
-- license frees (the subject as named, the license type wished, the request id).
CREATE TABLE waitlist (
    assignment_id       uuid PRIMARY KEY REFERENCES assignments (id) ON DELETE CASCADE,
    seq                 bigint GENERATED ALWAYS AS IDENTITY,
    space_id            text NOT NULL,
    adam_id             text NOT NULL,
    pricing_param       text NOT NULL,
    -- The license holder (the assignment's subject): one waiting entry per holder and asset.
    subject_id          uuid NOT NULL,
    subject_kind        text NOT NULL CHECK (subject_kind IN ('device', 'user')),
    subject_external_id text NOT NULL,
    wish                text NOT NULL CHECK (wish IN ('auto', 'device', 'user')),
    request_id          text,
    expires_at          timestamptz NOT NULL,
    UNIQUE (space_id, adam_id, pricing_param, subject_id)
);
CREATE INDEX waitlist_line ON waitlist (space_id, adam_id, pricing_param, seq);
CREATE INDEX waitlist_expiry ON waitlist (expires_at);

-- Wake-ups: one row per (space, asset) whose line may be served because a license freed.
-- Written by the trigger below in the transaction that freed the license; claimed by the
-- wait-list workers of any replica with a lease (`locked_until`, FOR UPDATE SKIP LOCKED) and
-- deleted once served, unless `generation` moved meanwhile (another license freed).
CREATE TABLE waitlist_wakeups (
    space_id      text NOT NULL,
    adam_id       text NOT NULL,
    pricing_param text NOT NULL,
    generation    bigint NOT NULL DEFAULT 1,
    woken_at      timestamptz NOT NULL DEFAULT now(),
    locked_by     text,
    locked_until  timestamptz,
    PRIMARY KEY (space_id, adam_id, pricing_param)
);

-- Every path that frees a license changes the asset row: a revocation or a failed
-- association lowers `held`, a sync or Apple's ASSET_COUNT notification raises `apple_total`
-- or lowers `foreign_assigned`, an attach or sync inserts an asset row. When what is free grows
-- and someone waits for the asset in the account's space, the line is woken. The asset rows are
-- locked by the statement that fires this, so a serving transaction (which locks the asset rows
-- of its line first) either sees the license or is woken again after it commits.
-- Statement-level, over the transition tables: one statement freeing licenses of several
-- assets upserts their wake-ups in key order, so two such statements never lock wake-up rows in
-- opposite orders. Nothing is done (one probe) while nobody waits at all.
CREATE OR REPLACE FUNCTION waitlist_wake() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM waitlist) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO waitlist_wakeups AS w (space_id, adam_id, pricing_param)
        SELECT DISTINCT a.space_id, n.adam_id, n.pricing_param
          FROM new_rows n
          JOIN old_rows o ON o.account_id = n.account_id AND o.adam_id = n.adam_id
                         AND o.pricing_param = n.pricing_param
          JOIN accounts a ON a.id = n.account_id
         WHERE n.apple_total - n.held - n.foreign_assigned > 0
           AND n.apple_total - n.held - n.foreign_assigned
               > o.apple_total - o.held - o.foreign_assigned
           AND EXISTS (SELECT 1 FROM waitlist l
                        WHERE l.space_id = a.space_id AND l.adam_id = n.adam_id
                          AND l.pricing_param = n.pricing_param)
         ORDER BY 1, 2, 3
        ON CONFLICT (space_id, adam_id, pricing_param)
        DO UPDATE SET generation = w.generation + 1, woken_at = now();
    ELSE
        INSERT INTO waitlist_wakeups AS w (space_id, adam_id, pricing_param)
        SELECT DISTINCT a.space_id, n.adam_id, n.pricing_param
          FROM new_rows n
          JOIN accounts a ON a.id = n.account_id
         WHERE n.apple_total - n.held - n.foreign_assigned > 0
           AND EXISTS (SELECT 1 FROM waitlist l
                        WHERE l.space_id = a.space_id AND l.adam_id = n.adam_id
                          AND l.pricing_param = n.pricing_param)
         ORDER BY 1, 2, 3
        ON CONFLICT (space_id, adam_id, pricing_param)
        DO UPDATE SET generation = w.generation + 1, woken_at = now();
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER waitlist_wake_on_update
    AFTER UPDATE ON assets
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION waitlist_wake();
CREATE TRIGGER waitlist_wake_on_insert
    AFTER INSERT ON assets
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION waitlist_wake();

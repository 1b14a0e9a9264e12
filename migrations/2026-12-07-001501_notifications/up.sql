-- Notifications (issue 15, rules N1, N2): license usage crossings, exhaustion and its forecast,
-- token problems. One row per raised notification; `cleared_at` ends it (kept as history: no
-- foreign key, so neither an account's nor a space's removal deletes one — H1).
--
-- `key` names the condition (kind, scope, level), e.g. `license.usage:asset:361309726:STDQ:70`.
-- At most one *open* notification per (space, key): the partial unique index makes a raise by
-- two replicas at once insert one row (ON CONFLICT DO NOTHING), so each is raised once.
CREATE TABLE notifications (
    id               uuid        PRIMARY KEY,
    space_id         text        NOT NULL,
    key              text        NOT NULL,
    kind             text        NOT NULL,
    severity         text        NOT NULL,
    scope            text        NOT NULL,
    account_id       uuid,
    adam_id          text,
    pricing_param    text,
    level            integer,
    message          text        NOT NULL,
    action           text        NOT NULL,
    details          jsonb       NOT NULL DEFAULT '{}',
    raised_at        timestamptz NOT NULL DEFAULT now(),
    cleared_at       timestamptz,
    cleared_reason   text,
    acknowledged_at  timestamptz,
    acknowledged_by  text
);
CREATE UNIQUE INDEX notifications_open_key ON notifications (space_id, key)
    WHERE cleared_at IS NULL;
-- The list: newest first per space (ids are UUIDv7, so id order is raise order).
CREATE INDEX notifications_by_space ON notifications (space_id, id);

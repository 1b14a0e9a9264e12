-- Priorities stay unique per space, but as an exclusion constraint instead of a unique one.
-- PostgreSQL treats a column under a unique constraint as a key column: updating it takes a
-- FOR UPDATE row lock, which waits for (and deadlocks with) the FOR KEY SHARE locks that
-- inserting jobs and Apple events for the account takes. An exclusion constraint enforces the
-- same rule (still deferrable, so one transaction can permute priorities) without making
-- `priority` a key column, so a reorder no longer blocks allocations or the dispatcher.
ALTER TABLE accounts DROP CONSTRAINT accounts_priority_unique;
ALTER TABLE accounts ADD CONSTRAINT accounts_priority_unique
    EXCLUDE USING btree (space_id WITH =, priority WITH =) DEFERRABLE INITIALLY IMMEDIATE;

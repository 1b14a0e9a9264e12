ALTER TABLE accounts DROP CONSTRAINT accounts_priority_unique;
ALTER TABLE accounts ADD CONSTRAINT accounts_priority_unique
    UNIQUE (space_id, priority) DEFERRABLE INITIALLY IMMEDIATE;

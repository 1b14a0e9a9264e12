DROP INDEX IF EXISTS activity_rare_actions;
DROP INDEX IF EXISTS activity_by_actor;
DROP INDEX IF EXISTS activity_by_request;
DROP INDEX IF EXISTS activity_by_asset;
DROP INDEX IF EXISTS activity_by_subject;
-- Before this migration only allocations named their subject.
UPDATE activity_log SET subject = NULL
 WHERE subject IS NOT NULL AND action <> 'assignment.allocated';

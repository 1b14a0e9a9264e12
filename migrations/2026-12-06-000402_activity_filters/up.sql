-- The activity log's filters (GET /v1/spaces/{space}/activity; src/ledger/activity.rs explains
-- which filter walks which index). Few indexes: each one slows every allocation's activity insert.

-- Rows about a license name its subject (`device:SERIAL` / `user:ID`); only allocations did.
UPDATE activity_log l SET subject = s.kind || ':' || s.external_id
  FROM assignments a JOIN subjects s ON s.id = a.subject_id
 WHERE l.assignment_id = a.id AND l.subject IS NULL;

CREATE INDEX IF NOT EXISTS activity_by_subject ON activity_log (space_id, subject, id)
    WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS activity_by_asset ON activity_log (space_id, adam_id, id)
    WHERE adam_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS activity_by_request ON activity_log (request_id, id)
    WHERE request_id IS NOT NULL;
-- Callers' rows; Apple's results (by `system`, half the log) skip it.
CREATE INDEX IF NOT EXISTS activity_by_actor ON activity_log (space_id, actor, id)
    WHERE actor <> 'system';
-- Every action but the two every allocation writes (ActivityAction::FREQUENT): those are walked
-- over activity_by_space, and allocations do not pay for this index.
CREATE INDEX IF NOT EXISTS activity_rare_actions ON activity_log (space_id, action, id)
    WHERE action NOT IN ('assignment.allocated', 'assignment.activated');

-- Before this migration only allocations named their subject.
UPDATE activity_log SET subject = NULL
 WHERE subject IS NOT NULL AND action <> 'assignment.allocated';

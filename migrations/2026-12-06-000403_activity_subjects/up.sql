-- Rows about a license name its subject (`device:SERIAL` / `user:ID`); before this release only
-- allocations did. The backfill commits every 10,000 ids (no transaction around the migration:
-- metadata.toml), so it holds row locks on one batch at a time and never blocks the log's
-- inserts (new rows are written with their subject already). Rerunnable: it only fills NULLs.
DO $$
DECLARE
    lo bigint;
    hi bigint;
BEGIN
    SELECT min(id), max(id) INTO lo, hi FROM activity_log WHERE assignment_id IS NOT NULL;
    WHILE lo IS NOT NULL AND lo <= hi LOOP
        UPDATE activity_log l SET subject = s.kind || ':' || s.external_id
          FROM assignments a JOIN subjects s ON s.id = a.subject_id
         WHERE l.id >= lo AND l.id < lo + 10000
           AND l.assignment_id = a.id AND l.subject IS NULL;
        COMMIT;
        lo := lo + 10000;
    END LOOP;
END
$$;

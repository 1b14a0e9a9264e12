DROP TRIGGER IF EXISTS subjects_touch_updated_at ON subjects;
DROP FUNCTION IF EXISTS subjects_touch_updated_at();
DROP INDEX IF EXISTS subjects_by_user;

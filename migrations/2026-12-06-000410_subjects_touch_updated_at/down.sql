DROP TRIGGER IF EXISTS subjects_touch_updated_at ON subjects;
DROP FUNCTION IF EXISTS subjects_touch_updated_at();

-- The device and user views show `updated_at` as "when an allocation request last changed the
-- stored facts". Allocation upserts the subject row on every request (ON CONFLICT DO UPDATE)
-- and never set `updated_at`, so it stayed the creation time. This trigger moves it when the
-- facts (groups, the device's user, Shared iPad) change, and keeps it when a request repeats
-- them: the upsert's statement stays as it is, and so does every other writer of the table.
-- (Creating a trigger takes a short SHARE ROW EXCLUSIVE lock on `subjects`: no rows are read.)
CREATE OR REPLACE FUNCTION subjects_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.groups, NEW.user_external_id, NEW.shared_ipad)
       IS DISTINCT FROM (OLD.groups, OLD.user_external_id, OLD.shared_ipad) THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS subjects_touch_updated_at ON subjects;
CREATE TRIGGER subjects_touch_updated_at
    BEFORE UPDATE ON subjects
    FOR EACH ROW EXECUTE FUNCTION subjects_touch_updated_at();

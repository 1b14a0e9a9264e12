DROP INDEX IF EXISTS subjects_by_user;

DROP TABLE lifecycle_settings;
DROP TABLE lifecycle_marks;
DROP TABLE lifecycle_events;

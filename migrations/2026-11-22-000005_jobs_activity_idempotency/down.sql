DROP TABLE idempotency_keys;
DROP TABLE activity_log;
DROP TABLE jobs;

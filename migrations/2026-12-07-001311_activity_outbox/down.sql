DROP TABLE event_watermark;
ALTER TABLE activity_log DROP COLUMN version;
ALTER TABLE activity_log DROP COLUMN txid;

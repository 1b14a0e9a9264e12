ALTER TABLE jobs
    DROP COLUMN adam_id,
    DROP COLUMN pricing_param,
    DROP COLUMN license_type;

DROP TABLE drift_watermarks;
DROP TABLE mirror_assets;

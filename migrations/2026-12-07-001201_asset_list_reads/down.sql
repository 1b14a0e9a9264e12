DROP TABLE asset_list_reads;

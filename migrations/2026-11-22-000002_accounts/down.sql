DROP TABLE assets;
DROP TABLE account_distribution_entries;
DROP TABLE accounts;

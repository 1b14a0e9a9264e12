DROP TABLE policy_entries;
DROP TABLE distribution_policies;
DROP TABLE subjects;

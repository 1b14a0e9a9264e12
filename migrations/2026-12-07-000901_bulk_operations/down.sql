DROP TABLE bulk_operation_items;
DROP TABLE bulk_operations;

DROP TABLE event_sequences;
DROP TABLE events;

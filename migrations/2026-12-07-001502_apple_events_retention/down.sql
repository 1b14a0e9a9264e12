DROP INDEX apple_events_finished;

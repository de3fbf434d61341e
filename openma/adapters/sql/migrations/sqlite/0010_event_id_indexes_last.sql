-- Postgres's 0010 rebuilds the unique event-id indexes of session_events and session_inbox so that its planner
-- serves lookups by event id from them on tables without statistics. SQLite's planner already prefers the
-- index that matches every equality of a lookup, so there is nothing to change here; the file keeps the two
-- dialects' migration lists the same.
SELECT 1;

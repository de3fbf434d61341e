-- The unique event-id indexes of the event log and the inbox lead with event_id (as on Postgres, whose planner
-- needs it; SQLite serves its lookups from the index either way, and the two schemas stay the same).
--
-- Every other index of session_events and session_inbox starts with (tenant_id, session_id). Before the first
-- ANALYZE of a table (a new database; autovacuum analyzes it a minute or more later) the planner estimates that
-- a session has about one row, and costed a lookup by (tenant_id, session_id, event_id) through the primary
-- key, the type or the state index as cheap as through the event-id index, or cheaper: served so, it filtered
-- every row of the session, and promoting an input or changing a session's status slowed down with the
-- session's length. Led by event_id, the unique index is the only one a condition on the event id alone can
-- use; the Postgres engine's lookups give the planner no other indexable condition (Postgres; see postgres_engine.py).
-- Uniqueness is unchanged: the same three columns.
DROP INDEX session_events_id_idx;
CREATE UNIQUE INDEX session_events_id_idx ON session_events (event_id, tenant_id, session_id);
DROP INDEX session_inbox_id_idx;
CREATE UNIQUE INDEX session_inbox_id_idx ON session_inbox (event_id, tenant_id, session_id);

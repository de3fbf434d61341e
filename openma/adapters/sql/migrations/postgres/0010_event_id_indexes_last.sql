-- The unique event-id indexes of the event log and the inbox, rebuilt so each is the newest index of its table.
--
-- Every index of session_events and session_inbox starts with (tenant_id, session_id). Before the first ANALYZE
-- of a table (a new database; autovacuum analyzes it a minute or more later) the planner estimates that a
-- session has about one row, so a lookup by (tenant_id, session_id, event_id) costs the same through any of
-- those indexes, and Postgres keeps the first path it costed, which is the path of the newest index. Served by
-- the primary key or the type or state index, the lookup filtered every row of the session, so promoting an
-- input or changing a session's status slowed down with the session's length. Served by the event-id index,
-- it reads one entry. A later migration that adds an index to either table must rebuild these two after it
-- (tests/test_pg_dedup_plans.py checks the plans on a table without statistics).
DROP INDEX session_events_id_idx;
CREATE UNIQUE INDEX session_events_id_idx ON session_events (tenant_id, session_id, event_id);
DROP INDEX session_inbox_id_idx;
CREATE UNIQUE INDEX session_inbox_id_idx ON session_inbox (tenant_id, session_id, event_id);

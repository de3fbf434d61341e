-- SQLite only: its event log and inbox become rowid tables (see the SQLite file of the same name).
-- Postgres tables are heaps with separate indexes already, so nothing changes here; the file keeps the two
-- dialects' migration lists the same.
SELECT 1;

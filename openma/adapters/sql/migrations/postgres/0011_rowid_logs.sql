-- SQLite's 0011 moves the event log and the inbox from WITHOUT ROWID tables (whose rows of 1 KB or more
-- went to overflow pages) to rowid tables. Postgres tables are heaps with separate indexes already, and TOAST
-- keeps large values out of line only above about 2 KB, so there is nothing to change here; the file keeps
-- the two dialects' migration lists the same.
SELECT 1;

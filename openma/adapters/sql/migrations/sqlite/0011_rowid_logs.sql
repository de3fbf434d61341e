-- The event log and the inbox become rowid tables (they were WITHOUT ROWID). A WITHOUT ROWID table is a
-- B-tree keyed by its primary key that keeps a row in the page only up to about a quarter of a page
-- (1 KB of a 4 KB page): every event of 1 KB or more went to an overflow page of its own, so an event of
-- 1 KB took about 4.9 KB on disk and one page write more per append. A rowid table keeps rows of up to
-- almost a page inline; the primary key (tenant_id, session_id, seq) stays, as a unique index, and the
-- other indexes point at the rowid instead of repeating the key. Same columns, same constraints, same
-- index names: only the storage changes. Postgres tables are heaps already (its 0011 is empty).

CREATE TABLE session_events_rowid (
    tenant_id  TEXT   NOT NULL,
    session_id TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    event_id   TEXT   NOT NULL,
    type       TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    blob_key   TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, seq)
);

INSERT INTO session_events_rowid (tenant_id, session_id, seq, event_id, type, data, blob_key, created_at)
    SELECT tenant_id, session_id, seq, event_id, type, data, blob_key, created_at
    FROM session_events ORDER BY tenant_id, session_id, seq;

DROP TABLE session_events;
ALTER TABLE session_events_rowid RENAME TO session_events;

CREATE UNIQUE INDEX session_events_id_idx ON session_events (tenant_id, session_id, event_id);
CREATE INDEX session_events_type_idx ON session_events (tenant_id, session_id, type, seq);

CREATE TABLE session_inbox_rowid (
    tenant_id  TEXT   NOT NULL,
    session_id TEXT   NOT NULL,
    pos        BIGINT NOT NULL,
    event_id   TEXT   NOT NULL,
    type       TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    blob_key   TEXT,
    state      TEXT   NOT NULL DEFAULT 'pending',
    seq        BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, pos)
);

INSERT INTO session_inbox_rowid (
    tenant_id, session_id, pos, event_id, type, data, blob_key, state, seq, created_at, updated_at
)
    SELECT tenant_id, session_id, pos, event_id, type, data, blob_key, state, seq, created_at, updated_at
    FROM session_inbox ORDER BY tenant_id, session_id, pos;

DROP TABLE session_inbox;
ALTER TABLE session_inbox_rowid RENAME TO session_inbox;

CREATE UNIQUE INDEX session_inbox_id_idx ON session_inbox (tenant_id, session_id, event_id);
CREATE INDEX session_inbox_state_idx ON session_inbox (tenant_id, session_id, state, pos);

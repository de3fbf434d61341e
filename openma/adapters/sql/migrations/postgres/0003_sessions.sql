-- Sessions, their event logs, inboxes and model streams (the same tables and columns as on SQLite).
-- Id columns use the "C" collation, so keyset pages order as on SQLite.
-- A session's counters live on its row: last_seq mints event seqs and last_inbox_pos inbox positions, each
-- bumped in the same transaction as the insert. retained_from_seq is the oldest seq retention kept (the
-- log is gapless from there to last_seq). lease_epoch fences the session's single writer. deleted_at marks
-- a session whose rows are being removed in batches (gc finishes an interrupted delete).

CREATE TABLE sessions (
    tenant_id            TEXT COLLATE "C" NOT NULL,
    id                   TEXT COLLATE "C" NOT NULL,
    agent_id             TEXT COLLATE "C" NOT NULL,
    environment_id       TEXT COLLATE "C" NOT NULL,
    agent_snapshot       TEXT   NOT NULL,
    environment_snapshot TEXT   NOT NULL,
    title                TEXT,
    metadata             TEXT   NOT NULL,
    status               TEXT   NOT NULL DEFAULT 'idle',
    last_seq             BIGINT NOT NULL DEFAULT 0,
    retained_from_seq    BIGINT NOT NULL DEFAULT 1,
    last_inbox_pos       BIGINT NOT NULL DEFAULT 0,
    lease_epoch          BIGINT NOT NULL DEFAULT 0,
    lease_holder         TEXT,
    lease_expires_at     BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    archived_at          BIGINT,
    deleted_at           BIGINT,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX sessions_created_idx ON sessions (tenant_id, created_at, id);
CREATE INDEX sessions_agent_idx ON sessions (tenant_id, agent_id, created_at, id);

CREATE TABLE session_events (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    event_id   TEXT COLLATE "C" NOT NULL,
    type       TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    blob_key   TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, seq)
);

CREATE UNIQUE INDEX session_events_id_idx ON session_events (tenant_id, session_id, event_id);
CREATE INDEX session_events_type_idx ON session_events (tenant_id, session_id, type, seq);

CREATE TABLE session_inbox (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    pos        BIGINT NOT NULL,
    event_id   TEXT COLLATE "C" NOT NULL,
    type       TEXT   NOT NULL,
    data       TEXT   NOT NULL,
    blob_key   TEXT,
    state      TEXT   NOT NULL DEFAULT 'pending',
    seq        BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, pos)
);

CREATE UNIQUE INDEX session_inbox_id_idx ON session_inbox (tenant_id, session_id, event_id);
CREATE INDEX session_inbox_state_idx ON session_inbox (tenant_id, session_id, state, pos);

CREATE TABLE session_streams (
    tenant_id   TEXT COLLATE "C" NOT NULL,
    session_id  TEXT COLLATE "C" NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    kind        TEXT   NOT NULL,
    message_id  TEXT,
    status      TEXT   NOT NULL DEFAULT 'open',
    batches     BIGINT NOT NULL DEFAULT 0,
    chunks      BIGINT NOT NULL DEFAULT 0,
    error       TEXT,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    PRIMARY KEY (tenant_id, session_id, id)
);

CREATE INDEX session_streams_status_idx ON session_streams (tenant_id, session_id, status, started_at);

CREATE TABLE session_stream_chunks (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    stream_id  TEXT COLLATE "C" NOT NULL,
    batch      BIGINT NOT NULL,
    text       TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, session_id, stream_id, batch)
);

-- Workers: the runnable index and scheduled wake-ups.
-- session_runnable holds one row per session with pending input (or a wake-up that fell due): posting input
-- inserts it in the same write unit as the inbox row, a finished turn deletes it only when the inbox is
-- drained (under the session row's lock), so a worker finds runnable sessions through the "since" index and
-- never by scanning every session. session_wakeups holds each session's scheduled wake-ups; next_due is
-- moved forward by a conditional update when one fires, so each due time fires once.

CREATE TABLE session_runnable (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    since      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
);

CREATE INDEX session_runnable_since_idx ON session_runnable (since, tenant_id, session_id);

CREATE TABLE session_wakeups (
    tenant_id     TEXT COLLATE "C" NOT NULL,
    session_id    TEXT COLLATE "C" NOT NULL,
    id            TEXT COLLATE "C" NOT NULL,
    kind          TEXT   NOT NULL,
    every_ms      BIGINT,
    cron          TEXT,
    prompt        TEXT   NOT NULL,
    next_due      BIGINT NOT NULL,
    fired         BIGINT NOT NULL DEFAULT 0,
    last_fired_at BIGINT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, id)
);

CREATE INDEX session_wakeups_due_idx ON session_wakeups (next_due, tenant_id, session_id, id);

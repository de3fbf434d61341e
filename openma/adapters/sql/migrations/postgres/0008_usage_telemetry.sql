-- The usage ledger: one row per slice of usage, keyed per tenant by the slice's deterministic key, so a
-- retried write is an INSERT ... ON CONFLICT DO NOTHING that counts nothing twice. pos orders the slices
-- for the billing export: it is minted from usage_counters in the same write unit as the insert, so
-- positions commit in increasing order (a reader that sees pos n has every committed slice below n).
-- Positions may have gaps (a duplicate write bumps the counter and inserts nothing). at is when the usage
-- happened (the summary's window), recorded_at when it was written; both Unix ms.
-- usage_acks is how far each export consumer has acknowledged.

CREATE TABLE usage_slices (
    tenant_id          TEXT   COLLATE "C" NOT NULL,
    key                TEXT   COLLATE "C" NOT NULL,
    pos                BIGINT NOT NULL,
    session_id         TEXT   COLLATE "C" NOT NULL,
    kind               TEXT   NOT NULL,
    name               TEXT   NOT NULL,
    input_tokens       BIGINT NOT NULL DEFAULT 0,
    output_tokens      BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    duration_ms        BIGINT NOT NULL DEFAULT 0,
    at                 BIGINT NOT NULL,
    recorded_at        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE UNIQUE INDEX usage_slices_pos_idx ON usage_slices (tenant_id, pos);
CREATE INDEX usage_slices_at_idx ON usage_slices (tenant_id, at);
CREATE INDEX usage_slices_session_idx ON usage_slices (tenant_id, session_id, at);

CREATE TABLE usage_counters (
    tenant_id TEXT   COLLATE "C" NOT NULL,
    last_pos  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id)
);

CREATE TABLE usage_acks (
    tenant_id  TEXT   COLLATE "C" NOT NULL,
    consumer   TEXT   COLLATE "C" NOT NULL,
    pos        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, consumer)
);

-- The telemetry dataset (the SQL telemetry sink): one row per event, its subject and outcome promoted to
-- columns for GROUP BY, the whole event (redacted) as JSON in fields. id is time-sortable, at is Unix ms.

CREATE TABLE telemetry_events (
    id          TEXT   COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    tenant_id   TEXT,
    session_id  TEXT,
    name        TEXT,
    outcome     TEXT,
    duration_ms DOUBLE PRECISION,
    fields      TEXT   NOT NULL,
    PRIMARY KEY (id)
);

CREATE INDEX telemetry_events_kind_idx ON telemetry_events (kind, at);
CREATE INDEX telemetry_events_at_idx ON telemetry_events (at);

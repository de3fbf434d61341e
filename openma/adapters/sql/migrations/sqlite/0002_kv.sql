-- The KV store: one row per (tenant, key). A row holds either text (value) or a 64-bit counter
-- (counter), never both. expires_at is Unix ms (NULL: never); expired rows are invisible to reads
-- and are deleted by the sweep, which walks (tenant_id, expires_at).

CREATE TABLE kv_entries (
    tenant_id  TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    value      TEXT,
    counter    BIGINT,
    expires_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key),
    CHECK ((value IS NULL) <> (counter IS NULL))
) WITHOUT ROWID;

CREATE INDEX kv_entries_expires_idx ON kv_entries (tenant_id, expires_at);

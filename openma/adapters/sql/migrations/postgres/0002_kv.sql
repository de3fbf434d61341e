-- The KV store: one row per (tenant, key). A row holds either text (value) or a 64-bit counter
-- (counter), never both. expires_at is Unix ms (NULL: never); expired rows are invisible to reads
-- and are deleted by the sweep, which walks (tenant_id, expires_at).
-- key uses the "C" collation so that keys order by code point, as on SQLite, whatever the database's
-- default collation is (keyset cursors and prefix ranges depend on it).

CREATE TABLE kv_entries (
    tenant_id  TEXT   NOT NULL,
    key        TEXT   COLLATE "C" NOT NULL,
    value      TEXT,
    counter    BIGINT,
    expires_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key),
    CHECK ((value IS NULL) <> (counter IS NULL))
);

CREATE INDEX kv_entries_expires_idx ON kv_entries (tenant_id, expires_at);

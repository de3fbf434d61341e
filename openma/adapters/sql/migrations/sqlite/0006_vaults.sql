-- Vaults, their credentials, and per-session secrets. Secret values are stored only sealed
-- (AES-256-GCM, see openma/core/secrets.py): the *_sealed columns hold "v1.<key id>.<base64>" text.

CREATE TABLE vaults (
    tenant_id   TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    name_search TEXT   NOT NULL,
    description TEXT   NOT NULL,
    metadata    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    archived_at BIGINT,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;

CREATE INDEX vaults_created_idx ON vaults (tenant_id, created_at, id);
CREATE UNIQUE INDEX vaults_active_name_idx ON vaults (tenant_id, name) WHERE archived_at IS NULL;

CREATE TABLE credentials (
    tenant_id      TEXT   NOT NULL,
    id             TEXT   NOT NULL,
    vault_id       TEXT   NOT NULL,
    name           TEXT   NOT NULL,
    name_search    TEXT   NOT NULL,
    auth_type      TEXT   NOT NULL,
    auth_public    TEXT   NOT NULL,
    auth_preview   TEXT   NOT NULL,
    auth_sealed    TEXT   NOT NULL,
    mcp_server_url TEXT,
    metadata       TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    archived_at    BIGINT,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;

CREATE INDEX credentials_created_idx ON credentials (tenant_id, created_at, id);
CREATE INDEX credentials_vault_idx ON credentials (tenant_id, vault_id, archived_at);
CREATE UNIQUE INDEX credentials_active_mcp_idx ON credentials (tenant_id, vault_id, mcp_server_url)
    WHERE archived_at IS NULL AND mcp_server_url IS NOT NULL;

CREATE TABLE session_secrets (
    tenant_id  TEXT   NOT NULL,
    session_id TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    sealed     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, name)
) WITHOUT ROWID;

ALTER TABLE sessions ADD COLUMN vault_ids TEXT NOT NULL DEFAULT '[]';

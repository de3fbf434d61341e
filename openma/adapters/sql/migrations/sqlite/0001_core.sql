-- Tenants, agents (with their version history) and environments.
-- Timestamps are integer Unix milliseconds; JSON is stored as TEXT.

CREATE TABLE tenants (
    id          TEXT   NOT NULL PRIMARY KEY,
    name        TEXT   NOT NULL,
    metadata    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    archived_at BIGINT
) WITHOUT ROWID;

CREATE INDEX tenants_created_idx ON tenants (created_at, id);

CREATE TABLE agents (
    tenant_id   TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    name_search TEXT   NOT NULL,
    model_id    TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    config      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    archived_at BIGINT,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;

CREATE INDEX agents_created_idx ON agents (tenant_id, created_at, id);

CREATE TABLE agent_versions (
    tenant_id  TEXT   NOT NULL,
    agent_id   TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    snapshot   TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, version)
) WITHOUT ROWID;

CREATE TABLE environments (
    tenant_id   TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    name_search TEXT   NOT NULL,
    description TEXT   NOT NULL,
    config      TEXT   NOT NULL,
    metadata    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    archived_at BIGINT,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;

CREATE INDEX environments_created_idx ON environments (tenant_id, created_at, id);

-- Tenants, agents (with their version history) and environments.
-- Timestamps are integer Unix milliseconds; JSON is stored as TEXT (the same columns as SQLite).
-- Key columns use the "C" collation, so ids compare and sort bytewise, as in SQLite, whatever the
-- database's default collation: keyset pagination orders the same on both engines.

CREATE TABLE tenants (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name        TEXT   NOT NULL,
    metadata    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    archived_at BIGINT
);

CREATE INDEX tenants_created_idx ON tenants (created_at, id);

CREATE TABLE agents (
    tenant_id   TEXT COLLATE "C" NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    name        TEXT   NOT NULL,
    name_search TEXT   NOT NULL,
    model_id    TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    config      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    archived_at BIGINT,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX agents_created_idx ON agents (tenant_id, created_at, id);

CREATE TABLE agent_versions (
    tenant_id  TEXT COLLATE "C" NOT NULL,
    agent_id   TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    snapshot   TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, version)
);

CREATE TABLE environments (
    tenant_id   TEXT COLLATE "C" NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    name        TEXT   NOT NULL,
    name_search TEXT   NOT NULL,
    description TEXT   NOT NULL,
    config      TEXT   NOT NULL,
    metadata    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    archived_at BIGINT,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX environments_created_idx ON environments (tenant_id, created_at, id);

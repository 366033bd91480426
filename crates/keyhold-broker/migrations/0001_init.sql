-- The broker's schema. Portable SQL: the same file runs on SQLite and PostgreSQL (through
-- sqlx's `Any` driver), so only TEXT and BIGINT columns, no JSON or timestamp types (JSON is
-- stored as text, times as RFC 3339 text in UTC), and no auto-increment (ids come from
-- `counters`, see below).

-- Allocators. Every mutating transaction first increments the `change` row: on PostgreSQL the
-- row lock serialises writers until commit, on SQLite the write lock does, so change ids (the
-- snapshot version) become visible in increasing order and a proxy that saw version N never
-- misses a change with a smaller id that commits later.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('change', 0);
INSERT INTO counters (name, value) VALUES ('kms_config', 0);

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at TEXT NOT NULL
);
CREATE INDEX tenants_name ON tenants (name);

-- KMS configuration ids are unique across the broker and never 0: they are recorded in EDEKs.
CREATE TABLE kms_configs (
    id         BIGINT PRIMARY KEY CHECK (id > 0),
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    type       TEXT NOT NULL,
    settings   TEXT NOT NULL,
    sealed     TEXT,
    status     TEXT NOT NULL CHECK (status IN ('primary', 'active', 'disabled')),
    created_at TEXT NOT NULL
);
CREATE INDEX kms_configs_tenant ON kms_configs (tenant_id, id);
-- At most one primary configuration per tenant.
CREATE UNIQUE INDEX kms_configs_one_primary ON kms_configs (tenant_id) WHERE status = 'primary';

CREATE TABLE siem_configs (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    type       TEXT NOT NULL,
    settings   TEXT NOT NULL,
    sealed     TEXT,
    status     TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- The history: one row per change, written in the transaction of the change. `detail` is JSON
-- and never holds a credential (a sealed blob appears only as its key id).
CREATE TABLE changes (
    id        BIGINT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX changes_tenant ON changes (tenant_id, id);

-- One-time invitations of tenant admins (only the token's SHA-256 is kept). Tenant admins and
-- their sessions come with the web UI (a later migration).
CREATE TABLE invitations (
    token_hash TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    email      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT
);
CREATE INDEX invitations_tenant ON invitations (tenant_id);

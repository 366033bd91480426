-- Tenant secrets (deterministic, searchable field encryption; docs/broker.md §7): 32 random
-- bytes per (tenant, secret path) that the tenant's KMS made and wrapped. The broker keeps only
-- the KMS's ciphertext (`wrapped`, standard base64 TEXT as in 0006) and never sees a secret in
-- the clear; the proxies unwrap it through the tenant's KMS and derive field keys from it.
-- Portable SQL as in 0001: TEXT and BIGINT only, times as RFC 3339 text, ids from `counters`.

-- Tenant secret ids are unique across the broker, from 1 and below 2^31: every encrypted field
-- starts with its secret's id (a 32-bit number).
INSERT INTO counters (name, value) VALUES ('tenant_secret', 0);

-- A rotated secret (`rotated_at` set) stays forever: fields written under it still decrypt and
-- are still searched; the proxies make a new one under the tenant's primary configuration.
CREATE TABLE tenant_secrets (
    id            BIGINT PRIMARY KEY CHECK (id > 0 AND id < 2147483648),
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    secret_path   TEXT NOT NULL,
    kms_config_id BIGINT NOT NULL REFERENCES kms_configs (id),
    wrapped       TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    rotated_at    TEXT
);
-- At most one current (not rotated) secret per tenant, path and KMS configuration: concurrent
-- proxies converge on one.
CREATE UNIQUE INDEX tenant_secrets_current ON tenant_secrets (tenant_id, secret_path, kms_config_id)
    WHERE rotated_at IS NULL;
CREATE INDEX tenant_secrets_path ON tenant_secrets (tenant_id, secret_path, id);

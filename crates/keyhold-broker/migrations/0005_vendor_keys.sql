-- Who manages each KMS configuration: the vendor (a vendor-managed key, or a KMS the vendor
-- runs for the tenant) or the tenant (its own KMS). Configurations made before this migration
-- were added by whoever holds the vendor key or a tenant session; they count as the tenant's.
ALTER TABLE kms_configs ADD COLUMN managed_by TEXT NOT NULL DEFAULT 'tenant'
    CHECK (managed_by IN ('vendor', 'tenant'));

-- Rotation tracking: how many EDEKs naming each KMS configuration (and master key version,
-- where the KMS names one in its ciphertext) the proxies have been asked to unwrap or rekey,
-- summed over the reports proxies send. `key_version` is '' where the KMS names none.
CREATE TABLE kms_usage (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    config_id   BIGINT NOT NULL,
    key_version TEXT NOT NULL,
    edeks_seen  BIGINT NOT NULL,
    last_seen   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, config_id, key_version)
);

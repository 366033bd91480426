-- A tenant's key leasing settings (docs/leasing.md), sent to the proxies in the snapshot. A
-- missing row, or a NULL column, means the proxies' own default.
CREATE TABLE tenant_leasing (
    tenant_id         TEXT PRIMARY KEY REFERENCES tenants (id),
    enabled           BIGINT,
    renew_interval_ms BIGINT,
    max_hold_ms       BIGINT
);

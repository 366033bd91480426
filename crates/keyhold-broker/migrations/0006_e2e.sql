-- End-to-end encryption (docs/e2e-api.md): the server's side of keyhold-e2e's `AccessState`,
-- per tenant. Portable SQL as in 0001: TEXT and BIGINT only, binary values as standard base64
-- TEXT (SQLite's BLOB and PostgreSQL's BYTEA have no common name), times as RFC 3339 text.
-- Nothing here is a private key or a document key: public keys, passphrase-sealed user keys,
-- device certificates, transform keys, group keys sealed to admins, signed ciphertext, grants.
--
-- Every E2E mutation first increments the `e2e_event` counter row (as `change` in 0001): it
-- serialises E2E writers, so the rules that read before they write (a group keeps one admin)
-- hold under concurrency, and event ids become visible in increasing order.

INSERT INTO counters (name, value) VALUES ('e2e_event', 0);
-- The id of the last E2E event a proxy has durably spooled and acknowledged (as
-- `admin_events_delivered` in 0003), and the lease of the proxy delivering them.
INSERT INTO counters (name, value) VALUES ('e2e_events_delivered', 0);
INSERT INTO proxy_leases (name, holder, until_ms) VALUES ('e2e_events', '', 0);

-- Users, created by the vendor's backend: their public keys (48-byte transform-encryption key,
-- 32-byte Ed25519 key) and their private keys sealed under their passphrase.
CREATE TABLE e2e_users (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    user_id        TEXT NOT NULL,
    encryption_key TEXT NOT NULL,
    signing_key    TEXT NOT NULL,
    sealed_keys    TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

-- Authorized devices: the certificate (the device's public keys, signed by its user) and the
-- transform key user -> device. Revoking a device erases its transform key and sets revoked_at;
-- the certificate stays, so that documents the device wrote keep a verifiable author, and the
-- device id is not reused.
CREATE TABLE e2e_devices (
    tenant_id             TEXT NOT NULL,
    user_id               TEXT NOT NULL,
    device_id             TEXT NOT NULL,
    encryption_key        TEXT NOT NULL,
    signing_key           TEXT NOT NULL,
    certificate_signature TEXT NOT NULL,
    transform_key         TEXT NOT NULL,
    created_at            TEXT NOT NULL,
    revoked_at            TEXT,
    PRIMARY KEY (tenant_id, user_id, device_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES e2e_users (tenant_id, user_id)
);

CREATE TABLE e2e_groups (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    group_id   TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, group_id)
);

-- The group's private key sealed to each admin's public key.
CREATE TABLE e2e_group_admins (
    tenant_id        TEXT NOT NULL,
    group_id         TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    sealed_group_key TEXT NOT NULL,
    PRIMARY KEY (tenant_id, group_id, user_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES e2e_groups (tenant_id, group_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES e2e_users (tenant_id, user_id)
);

-- Members: the transform key group -> member.
CREATE TABLE e2e_group_members (
    tenant_id     TEXT NOT NULL,
    group_id      TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    transform_key TEXT NOT NULL,
    PRIMARY KEY (tenant_id, group_id, user_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES e2e_groups (tenant_id, group_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES e2e_users (tenant_id, user_id)
);
CREATE INDEX e2e_group_members_user ON e2e_group_members (tenant_id, user_id);

-- Documents as their author stored them (`EncryptedDocument::to_bytes`); never rewritten.
CREATE TABLE e2e_documents (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    document_id   TEXT NOT NULL,
    author_user   TEXT NOT NULL,
    author_device TEXT NOT NULL,
    bytes         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, document_id)
);

-- Grants (`Grant::to_bytes`): one per document and recipient (a group or a user).
CREATE TABLE e2e_grants (
    tenant_id      TEXT NOT NULL,
    document_id    TEXT NOT NULL,
    recipient_kind TEXT NOT NULL CHECK (recipient_kind IN ('group', 'user')),
    recipient_id   TEXT NOT NULL,
    bytes          TEXT NOT NULL,
    PRIMARY KEY (tenant_id, document_id, recipient_kind, recipient_id),
    FOREIGN KEY (tenant_id, document_id) REFERENCES e2e_documents (tenant_id, document_id)
);

-- The E2E audit events, written in the transaction of the change they record (a decrypt's in
-- its own), ids from the `e2e_event` counter. `actor` is `<user>/<device>` or `vendor`;
-- `action` is the event's `e2e.*` name; `detail` is the event's JSON (keyhold_e2e::E2eEvent).
CREATE TABLE e2e_events (
    id        BIGINT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX e2e_events_tenant ON e2e_events (tenant_id, id);

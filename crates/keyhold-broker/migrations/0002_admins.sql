-- Tenant admins and their sessions (docs/broker.md, "Sessions and roles"). Portable SQL as in
-- 0001: TEXT and BIGINT only, times as RFC 3339 text in UTC, ids from `counters`.

INSERT INTO counters (name, value) VALUES ('admin', 0);

-- One row per accepted invitation. The e-mail address is the login name, unique across the
-- broker (stored lower-case). `password_hash` is an argon2id PHC string. `totp_secret` is the
-- base32 TOTP secret: a login secret the broker needs in order to check codes, so the database
-- holds it (it is not a KMS credential: those only ever arrive sealed). `totp_last_step` is the
-- last 30 s step accepted, so a code is accepted once.
CREATE TABLE admins (
    id             BIGINT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    email          TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    totp_secret    TEXT NOT NULL,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    disabled       BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
);
CREATE UNIQUE INDEX admins_email ON admins (email);
CREATE INDEX admins_tenant ON admins (tenant_id);

-- Sessions: `id` is the hex SHA-256 of the random token in the cookie (the token itself is not
-- stored). `csrf_token` is kept as is: `GET /api/v1/session` hands it back to a reloaded page,
-- and it is worthless without the cookie.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    admin_id   BIGINT NOT NULL REFERENCES admins (id),
    csrf_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX sessions_admin ON sessions (admin_id);

-- Admin events: every change record also becomes an audit event in the tenant's trail, written
-- by one proxy (the one holding the `admin_events` lease) into its spool, which delivers it to
-- the tenant's SIEM like any other event. `admin_events_delivered` is the id of the last change
-- a proxy has durably spooled and acknowledged.
INSERT INTO counters (name, value) VALUES ('admin_events_delivered', 0);

CREATE TABLE proxy_leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
INSERT INTO proxy_leases (name, holder, until_ms) VALUES ('admin_events', '', 0);

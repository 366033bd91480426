-- Revoked invitations (docs/broker.md §4.1): an invitation link sent to the wrong address, or
-- that may have been seen by others, is withdrawn before anyone accepts it. NULL: not revoked.
-- Portable SQL as in 0001.

ALTER TABLE invitations ADD COLUMN revoked_at TEXT;

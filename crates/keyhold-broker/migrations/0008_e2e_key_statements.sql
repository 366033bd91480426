-- Owners' signatures of the E2E public keys (docs/e2e-crypto.md §4.2). A device checks every
-- public key the service hands it against its owner's signature, so that a service that swaps
-- in a key of its own is caught: a user's keys are signed by the user (keyhold_e2e's
-- `SignedUserKeys`), a group's key by the device that created it (`SignedGroupKey`, checked
-- through that device's certificate in e2e_devices, kept when the device is revoked).
-- Signatures are standard base64 TEXT as in 0006. '' marks the rows stored before this
-- migration, whose keys nobody signed: the service hands them out with an empty signature (and
-- no creator) and devices refuse them.
-- Portable SQL as in 0001; one ALTER per statement (SQLite adds one column at a time).

ALTER TABLE e2e_users ADD COLUMN key_signature TEXT NOT NULL DEFAULT '';

-- The device that created the group (its user and id) and its signature of the group's key.
ALTER TABLE e2e_groups ADD COLUMN creator_user TEXT NOT NULL DEFAULT '';
ALTER TABLE e2e_groups ADD COLUMN creator_device TEXT NOT NULL DEFAULT '';
ALTER TABLE e2e_groups ADD COLUMN key_signature TEXT NOT NULL DEFAULT '';

//! The E2E rules end to end, in memory: groups, members, devices, grants, decrypts and their
//! audit events. What issue 9 asks to see, at the core's level (the service tests repeat it over
//! HTTP).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use keyhold_e2e::access::E2eAction;
use keyhold_e2e::pre;
use keyhold_e2e::{
    AccessError, AccessState, Actor, DeviceCertificate, DeviceKeys, DocumentError,
    EncryptedDocument, KeySealedToPublicKey, PassphraseCost, PassphraseSealedKey, PrivateKey,
    Recipient, SignedGroupKey, SignedUserKeys, UserKeys,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;

const TENANT: &str = "acme";
const CHEAP: PassphraseCost = PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 };

struct World {
    rng: ChaCha20Rng,
    state: AccessState,
}

struct Person {
    id: String,
    keys: UserKeys,
    devices: Vec<(String, DeviceKeys)>,
}

impl Person {
    fn actor(&self, device: usize) -> Actor<'_> {
        Actor { user: &self.id, device: &self.devices[device].0 }
    }
    fn device(&self, device: usize) -> &DeviceKeys {
        &self.devices[device].1
    }
}

impl World {
    fn new(seed: u64) -> Self {
        Self { rng: ChaCha20Rng::seed_from_u64(seed), state: AccessState::new(TENANT) }
    }

    fn user(&mut self, id: &str, passphrase: &str) -> Person {
        let keys = UserKeys::generate(&mut self.rng);
        let sealed =
            PassphraseSealedKey::seal(&keys, passphrase.as_bytes(), CHEAP, &mut self.rng).unwrap();
        let signed = SignedUserKeys::issue(&keys, TENANT, id);
        self.state.create_user(id, sealed, *signed.signature()).unwrap();
        let mut p = Person { id: id.into(), keys, devices: vec![] };
        self.add_device(&mut p, "laptop");
        p
    }

    /// What a user's new device does: open the user's keys with the passphrase (here the
    /// caller already has them), certify the device, make the transform key user → device.
    fn add_device(&mut self, p: &mut Person, name: &str) {
        let device = DeviceKeys::generate(&mut self.rng);
        let cert = DeviceCertificate::issue(&p.keys, &p.id, name, device.public());
        let tk =
            pre::transform_key(p.keys.encryption_key(), &device.public().encryption, &mut self.rng);
        self.state.authorize_device(cert, tk).unwrap();
        p.devices.push((name.into(), device));
    }

    fn group(&mut self, admin: &Person, id: &str) {
        let group_key = PrivateKey::generate(&mut self.rng);
        let sealed =
            KeySealedToPublicKey::seal(&group_key, &admin.keys.public().encryption, &mut self.rng)
                .unwrap();
        let membership =
            pre::transform_key(&group_key, &admin.keys.public().encryption, &mut self.rng);
        let signed = SignedGroupKey::issue(
            admin.device(0),
            TENANT,
            id,
            group_key.public_key(),
            &admin.id,
            &admin.devices[0].0,
        );
        self.state
            .create_group(
                admin.actor(0),
                id,
                group_key.public_key(),
                sealed,
                Some(membership),
                *signed.signature(),
            )
            .unwrap();
    }

    /// An admin's device fetches the group key (sealed to the admin, transformed to the
    /// device), opens it and uploads a transform key group → member.
    fn add_member(
        &mut self,
        admin: &Person,
        group: &str,
        member: &Person,
    ) -> Result<(), AccessError> {
        let sealed = self.state.group_key_for_admin(admin.actor(0), group)?;
        let group_key = sealed.open(admin.device(0).encryption_key()).unwrap();
        let tk = pre::transform_key(&group_key, &member.keys.public().encryption, &mut self.rng);
        self.state.add_member(admin.actor(0), group, &member.id, tk)
    }

    fn encrypt(
        &mut self,
        author: &Person,
        doc: &str,
        body: &[u8],
        to: &[Recipient],
    ) -> EncryptedDocument {
        let recipients: Vec<_> = to
            .iter()
            .map(|r| {
                let pk = match r {
                    Recipient::Group(g) => self.state.group_public_key(g).unwrap(),
                    Recipient::User(u) => self.state.user_public_keys(u).unwrap().encryption,
                };
                (r.clone(), pk)
            })
            .collect();
        let (document, grants) =
            keyhold_e2e::document::encrypt(doc, body, author.device(0), &recipients, &mut self.rng)
                .unwrap();
        self.state.create_document(author.actor(0), document.clone(), grants).unwrap();
        document
    }

    fn read(&mut self, reader: &Person, device: usize, doc: &str) -> Result<Vec<u8>, AccessError> {
        let grant = self.state.decrypt(reader.actor(device), doc)?;
        let (plain, _author) = grant.open(reader.device(device))?;
        Ok(plain.to_vec())
    }

    fn stored_documents(&self) -> Vec<Vec<u8>> {
        self.state.server_material().documents.iter().map(EncryptedDocument::to_bytes).collect()
    }
}

#[test]
fn a_member_added_after_encryption_reads_it_and_a_removed_member_no_longer_does() {
    let mut w = World::new(1);
    let alice = w.user("alice", "a-pass");
    let bob = w.user("bob", "b-pass");
    w.group(&alice, "employees");
    w.encrypt(&alice, "plan", b"the plan", &[Recipient::Group("employees".into())]);
    let stored_before = w.stored_documents();

    assert_eq!(w.read(&bob, 0, "plan").unwrap_err(), AccessError::NoAccess);
    w.add_member(&alice, "employees", &bob).unwrap();
    assert_eq!(w.read(&bob, 0, "plan").unwrap(), b"the plan");

    w.state.remove_member(alice.actor(0), "employees", "bob").unwrap();
    assert_eq!(w.read(&bob, 0, "plan").unwrap_err(), AccessError::NoAccess);
    assert_eq!(w.read(&alice, 0, "plan").unwrap(), b"the plan");
    // Nothing was re-encrypted: the stored document is byte for byte what was first stored.
    assert_eq!(w.stored_documents(), stored_before);
}

#[test]
fn a_revoked_device_fails_while_the_same_users_other_device_still_works() {
    let mut w = World::new(2);
    let alice = w.user("alice", "a-pass");
    let mut bob = w.user("bob", "b-pass");
    w.add_device(&mut bob, "phone");
    w.group(&alice, "team");
    w.add_member(&alice, "team", &bob).unwrap();
    w.encrypt(&alice, "memo", b"memo body", &[Recipient::Group("team".into())]);
    let stored_before = w.stored_documents();
    assert_eq!(w.read(&bob, 1, "memo").unwrap(), b"memo body");

    // Before it is lost, the phone writes a note to alice.
    let note = keyhold_e2e::document::encrypt(
        "note",
        b"from the phone",
        bob.device(1),
        &[(Recipient::User("alice".into()), alice.keys.public().encryption)],
        &mut w.rng,
    )
    .unwrap();
    w.state.create_document(bob.actor(1), note.0, note.1).unwrap();

    // Bob's laptop revokes his lost phone.
    w.state.revoke_device(bob.actor(0), "phone").unwrap();
    assert_eq!(w.read(&bob, 1, "memo").unwrap_err(), AccessError::UnknownDevice);
    assert_eq!(w.read(&bob, 0, "memo").unwrap(), b"memo body");
    // What the phone wrote before still reads, with its author, marked revoked.
    let g = w.state.decrypt(alice.actor(0), "note").unwrap();
    assert!(g.author_revoked);
    let (plain, author) = g.open(alice.device(0)).unwrap();
    assert_eq!((&plain[..], author), (&b"from the phone"[..], "bob"));
    assert!(!w.state.decrypt(alice.actor(0), "memo").unwrap().author_revoked);
    // A revoked device stays revoked: its id is not reused, and revoking again is refused.
    let again = DeviceKeys::generate(&mut w.rng);
    let cert = DeviceCertificate::issue(&bob.keys, "bob", "phone", again.public());
    let tk = pre::transform_key(bob.keys.encryption_key(), &again.public().encryption, &mut w.rng);
    assert_eq!(w.state.authorize_device(cert, tk).unwrap_err(), AccessError::Exists);
    assert_eq!(
        w.state.revoke_device(bob.actor(0), "phone").unwrap_err(),
        AccessError::UnknownDevice
    );
    // Nothing was re-encrypted: the memo (first by id) is byte for byte what was stored.
    assert_eq!(w.stored_documents()[..1], stored_before[..]);

    // The server cannot be made to transform to the phone's key any more, even by asking for
    // another user's device: alice cannot revoke or use bob's devices.
    assert_eq!(
        w.state.revoke_device(Actor { user: "alice", device: "phone" }, "laptop").unwrap_err(),
        AccessError::UnknownDevice
    );
}

#[test]
fn a_new_device_reads_what_was_shared_with_its_user_once_the_user_authorizes_it() {
    let mut w = World::new(3);
    let alice = w.user("alice", "a-pass");
    let carol_keys = UserKeys::generate(&mut w.rng);
    // Real Argon2id cost here: what a user's passphrase really protects.
    let sealed = PassphraseSealedKey::seal(
        &carol_keys,
        b"carol's passphrase",
        PassphraseCost::default(),
        &mut w.rng,
    )
    .unwrap();
    let signed = SignedUserKeys::issue(&carol_keys, TENANT, "carol");
    w.state.create_user("carol", sealed, *signed.signature()).unwrap();
    w.encrypt(&alice, "for-carol", b"hello carol", &[Recipient::User("carol".into())]);

    // Carol's first device: fetches her sealed keys, opens them with the passphrase.
    let fetched = w.state.sealed_user_keys("carol").unwrap().clone();
    assert!(fetched.open(b"wrong passphrase").is_err());
    let opened = fetched.open(b"carol's passphrase").unwrap();
    let device = DeviceKeys::generate(&mut w.rng);
    let actor = Actor { user: "carol", device: "tablet" };
    assert_eq!(w.state.decrypt(actor, "for-carol").unwrap_err(), AccessError::UnknownDevice);
    let cert = DeviceCertificate::issue(&opened, "carol", "tablet", device.public());
    let tk = pre::transform_key(opened.encryption_key(), &device.public().encryption, &mut w.rng);
    w.state.authorize_device(cert, tk).unwrap();
    let grant = w.state.decrypt(actor, "for-carol").unwrap();
    let (plain, author) = grant.open(&device).unwrap();
    assert_eq!((&plain[..], author), (&b"hello carol"[..], "alice"));
}

#[test]
fn documents_are_granted_and_revoked_per_user_and_per_group() {
    let mut w = World::new(4);
    let alice = w.user("alice", "a");
    let bob = w.user("bob", "b");
    let dan = w.user("dan", "d");
    w.group(&dan, "auditors");
    w.encrypt(&alice, "report", b"report body", &[Recipient::User("alice".into())]);
    assert_eq!(w.read(&bob, 0, "report").unwrap_err(), AccessError::NoAccess);

    // Alice, who can read it, grants it to bob and to the auditors group; the document is unchanged.
    let stored_before = w.stored_documents();
    let mine = w.state.decrypt(alice.actor(0), "report").unwrap();
    for (r, pk) in [
        (Recipient::User("bob".into()), w.state.user_public_keys("bob").unwrap().encryption),
        (Recipient::Group("auditors".into()), w.state.group_public_key("auditors").unwrap()),
    ] {
        let grant = mine
            .document
            .grant(
                &mine.value,
                alice.device(0).encryption_key(),
                alice.device(0),
                r,
                &pk,
                &mut w.rng,
            )
            .unwrap();
        w.state.grant(alice.actor(0), grant).unwrap();
    }
    assert_eq!(w.read(&bob, 0, "report").unwrap(), b"report body");
    assert_eq!(w.read(&dan, 0, "report").unwrap(), b"report body");
    assert_eq!(w.stored_documents(), stored_before);

    // Bob, a reader, may not replace the group's grant: the service cannot tell whether the new
    // one holds the same key (this one is sealed to bob), so it could cut the group off. The
    // author may.
    let bobs = w.state.decrypt(bob.actor(0), "report").unwrap();
    let bobs_key = w.state.user_public_keys("bob").unwrap().encryption;
    let hijack = bobs
        .document
        .grant(
            &bobs.value,
            bob.device(0).encryption_key(),
            bob.device(0),
            Recipient::Group("auditors".into()),
            &bobs_key,
            &mut w.rng,
        )
        .unwrap();
    assert_eq!(w.state.grant(bob.actor(0), hijack).unwrap_err(), AccessError::Exists);
    assert_eq!(w.read(&dan, 0, "report").unwrap(), b"report body");
    let group_key = w.state.group_public_key("auditors").unwrap();
    let renewed = mine
        .document
        .grant(
            &mine.value,
            alice.device(0).encryption_key(),
            alice.device(0),
            Recipient::Group("auditors".into()),
            &group_key,
            &mut w.rng,
        )
        .unwrap();
    w.state.grant(alice.actor(0), renewed).unwrap();
    assert_eq!(w.read(&dan, 0, "report").unwrap(), b"report body");

    // Bob may not revoke alice's grants; alice revokes bob; dan (the group's admin) revokes
    // the group's grant.
    assert_eq!(
        w.state.revoke(bob.actor(0), "report", &Recipient::Group("auditors".into())).unwrap_err(),
        AccessError::Forbidden
    );
    w.state.revoke(alice.actor(0), "report", &Recipient::User("bob".into())).unwrap();
    assert_eq!(w.read(&bob, 0, "report").unwrap_err(), AccessError::NoAccess);
    w.state.revoke(dan.actor(0), "report", &Recipient::Group("auditors".into())).unwrap();
    assert_eq!(w.read(&dan, 0, "report").unwrap_err(), AccessError::NoAccess);
    assert_eq!(w.read(&alice, 0, "report").unwrap(), b"report body");

    // Someone without access cannot store a grant, even a well-formed one of their own making.
    let eve = w.user("eve", "e");
    let (_, fake) = keyhold_e2e::document::encrypt(
        "report",
        b"other",
        eve.device(0),
        &[(Recipient::User("eve".into()), w.state.user_public_keys("eve").unwrap().encryption)],
        &mut w.rng,
    )
    .unwrap();
    assert_eq!(w.state.grant(eve.actor(0), fake[0].clone()).unwrap_err(), AccessError::NoAccess);
}

#[test]
fn altered_documents_and_signatures_are_refused_with_a_clear_error() {
    let mut w = World::new(5);
    let alice = w.user("alice", "a");
    let mallory = w.user("mallory", "m");
    w.encrypt(&alice, "doc", b"signed words", &[Recipient::User("alice".into())]);
    let grant = w.state.decrypt(alice.actor(0), "doc").unwrap();
    let bytes = grant.document.to_bytes();

    // Any altered byte of the stored document: refused by the reader.
    for i in (0..bytes.len()).step_by(3) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let refused = match EncryptedDocument::from_bytes(&bad) {
            Err(e) => AccessError::Document(e),
            Ok(doc) => {
                let mut g = grant.clone();
                g.document = doc;
                g.open(alice.device(0)).unwrap_err()
            }
        };
        assert!(
            matches!(refused, AccessError::Document(_) | AccessError::Certificate),
            "byte {i}: {refused:?}"
        );
    }
    // The body and the signature are covered: flipping them is a signature error, code 1113.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut g = grant.clone();
    g.document = EncryptedDocument::from_bytes(&bad).unwrap();
    let err = g.open(alice.device(0)).unwrap_err();
    assert_eq!(err, AccessError::Document(DocumentError::Signature));
    assert_eq!(err.code(), 1113);

    // A document signed by another device than the caller's is refused by the server; one whose
    // author certificate is not the author's is refused by the reader.
    let (forged, grants) = keyhold_e2e::document::encrypt(
        "forged",
        b"x",
        mallory.device(0),
        &[(Recipient::User("alice".into()), alice.keys.public().encryption)],
        &mut w.rng,
    )
    .unwrap();
    assert!(matches!(
        w.state.create_document(alice.actor(0), forged, grants).unwrap_err(),
        AccessError::KeyMismatch(_)
    ));
    let mut g = grant.clone();
    g.author = w.state.device_certificate("mallory", "laptop").unwrap().clone();
    assert!(g.open(alice.device(0)).is_err());
}

#[test]
fn membership_changes_device_changes_and_decrypts_are_audit_events() {
    let mut w = World::new(6);
    let alice = w.user("alice", "a");
    let mut bob = w.user("bob", "b");
    w.add_device(&mut bob, "phone");
    w.group(&alice, "g");
    w.add_member(&alice, "g", &bob).unwrap();
    w.encrypt(&alice, "d", b"x", &[Recipient::Group("g".into())]);
    w.state.take_events();

    w.read(&bob, 0, "d").unwrap();
    w.state.remove_member(alice.actor(0), "g", "bob").unwrap();
    assert!(w.read(&bob, 0, "d").is_err());
    w.state.revoke_device(bob.actor(0), "phone").unwrap();
    let events = w.state.take_events();
    let actions: Vec<_> = events.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            E2eAction::DocumentDecrypt,
            E2eAction::MemberRemove,
            E2eAction::DocumentDecryptDenied,
            E2eAction::DeviceRevoke
        ]
    );
    assert_eq!(events[0].group.as_deref(), Some("g"));
    assert_eq!(events[0].actor_user.as_deref(), Some("bob"));
    assert_eq!(events[1].user.as_deref(), Some("bob"));
    assert_eq!(events[3].device.as_deref(), Some("phone"));
    let json = serde_json::to_value(&events[1]).unwrap();
    assert_eq!(json["action"], "e2e.group.member_remove");
}

#[test]
fn only_admins_change_a_group_and_keys_must_match_their_records() {
    let mut w = World::new(7);
    let alice = w.user("alice", "a");
    let bob = w.user("bob", "b");
    let carol = w.user("carol", "c");
    w.group(&alice, "g");
    w.add_member(&alice, "g", &bob).unwrap();
    // Bob is a member, not an admin.
    assert_eq!(w.add_member(&bob, "g", &carol).unwrap_err(), AccessError::NotAdmin);
    assert_eq!(
        w.state.remove_member(bob.actor(0), "g", "alice").unwrap_err(),
        AccessError::NotAdmin
    );
    // A transform key to the wrong user, or from a key that is not the group's.
    let sealed = w.state.group_key_for_admin(alice.actor(0), "g").unwrap();
    let gk = sealed.open(alice.device(0).encryption_key()).unwrap();
    let to_bob = pre::transform_key(&gk, &bob.keys.public().encryption, &mut w.rng);
    assert!(matches!(
        w.state.add_member(alice.actor(0), "g", "carol", to_bob).unwrap_err(),
        AccessError::KeyMismatch(_)
    ));
    let not_group = pre::transform_key(
        alice.keys.encryption_key(),
        &carol.keys.public().encryption,
        &mut w.rng,
    );
    assert!(matches!(
        w.state.add_member(alice.actor(0), "g", "carol", not_group).unwrap_err(),
        AccessError::KeyMismatch(_)
    ));
    // Admins: carol made admin opens the group key on her device; the last admin stays.
    let for_carol =
        KeySealedToPublicKey::seal(&gk, &carol.keys.public().encryption, &mut w.rng).unwrap();
    w.state.add_admin(alice.actor(0), "g", "carol", for_carol).unwrap();
    let carols = w.state.group_key_for_admin(carol.actor(0), "g").unwrap();
    assert_eq!(
        carols.open(carol.device(0).encryption_key()).unwrap().public_key(),
        gk.public_key()
    );
    w.state.remove_admin(carol.actor(0), "g", "alice").unwrap();
    assert_eq!(
        w.state.remove_admin(carol.actor(0), "g", "carol").unwrap_err(),
        AccessError::LastAdmin
    );
    assert_eq!(
        w.state.group_key_for_admin(alice.actor(0), "g").unwrap_err(),
        AccessError::NotAdmin
    );
    // A device certificate not signed by the user is refused.
    let device = DeviceKeys::generate(&mut w.rng);
    let cert = DeviceCertificate::issue(&carol.keys, "bob", "stolen", device.public());
    let tk = pre::transform_key(bob.keys.encryption_key(), &device.public().encryption, &mut w.rng);
    assert_eq!(w.state.authorize_device(cert, tk).unwrap_err(), AccessError::Certificate);
    // Unknown things and bad ids.
    assert_eq!(w.read(&alice, 0, "nothing").unwrap_err(), AccessError::UnknownDocument);
    assert_eq!(w.state.group_public_key("nope").unwrap_err(), AccessError::UnknownGroup);
    let keys = UserKeys::generate(&mut w.rng);
    let sealed = PassphraseSealedKey::seal(&keys, b"p", CHEAP, &mut w.rng).unwrap();
    let sig = *SignedUserKeys::issue(&keys, TENANT, "").signature();
    assert_eq!(w.state.create_user("", sealed.clone(), sig).unwrap_err(), AccessError::Id);
    let sig = *SignedUserKeys::issue(&keys, TENANT, "alice").signature();
    assert_eq!(w.state.create_user("alice", sealed, sig).unwrap_err(), AccessError::Exists);
}

/// Every public key the service hands out is signed by its owner, and the service refuses
/// keys that are not: a user's keys by the user (for its id and organization), a group's key by
/// the device that created it. What a device does with them is in keyhold's SDK tests.
#[test]
fn public_keys_are_signed_by_their_owners_and_unsigned_ones_are_refused() {
    let mut w = World::new(11);
    let alice = w.user("alice", "a-pass");
    let mut bob = w.user("bob", "b-pass");
    w.add_device(&mut bob, "phone");

    // A user's keys: signed by another user, for another id, for another organization.
    let carol = UserKeys::generate(&mut w.rng);
    let sealed = PassphraseSealedKey::seal(&carol, b"c", CHEAP, &mut w.rng).unwrap();
    for bad in [
        SignedUserKeys::issue(&alice.keys, TENANT, "carol"),
        SignedUserKeys::issue(&carol, TENANT, "carol2"),
        SignedUserKeys::issue(&carol, "other-org", "carol"),
    ] {
        assert_eq!(
            w.state.create_user("carol", sealed.clone(), *bad.signature()).unwrap_err(),
            AccessError::KeyStatement
        );
    }
    assert_eq!(w.state.user_public_keys("carol").unwrap_err(), AccessError::UnknownUser);
    let good = SignedUserKeys::issue(&carol, TENANT, "carol");
    w.state.create_user("carol", sealed, *good.signature()).unwrap();
    let served = w.state.signed_user_keys("carol").unwrap();
    assert_eq!(served, good);
    assert_eq!(served.verify(TENANT), Ok(()));
    assert_eq!(served.keys, carol.public());

    // A group's key signed by another device than the caller (the same user's other device,
    // another user's), for another group, or another key.
    let group_key = PrivateKey::generate(&mut w.rng);
    let pk = group_key.public_key();
    let sealed =
        KeySealedToPublicKey::seal(&group_key, &bob.keys.public().encryption, &mut w.rng).unwrap();
    let other_pk = PrivateKey::generate(&mut w.rng).public_key();
    for bad in [
        SignedGroupKey::issue(bob.device(1), TENANT, "g", pk, "bob", "laptop"),
        SignedGroupKey::issue(alice.device(0), TENANT, "g", pk, "bob", "laptop"),
        SignedGroupKey::issue(bob.device(0), TENANT, "g2", pk, "bob", "laptop"),
        SignedGroupKey::issue(bob.device(0), TENANT, "g", other_pk, "bob", "laptop"),
        SignedGroupKey::issue(bob.device(0), "other-org", "g", pk, "bob", "laptop"),
        SignedGroupKey::issue(bob.device(0), TENANT, "g", pk, "bob", "phone"),
    ] {
        assert_eq!(
            w.state
                .create_group(bob.actor(0), "g", pk, sealed.clone(), None, *bad.signature())
                .unwrap_err(),
            AccessError::KeyStatement
        );
    }
    assert_eq!(w.state.group_public_key("g").unwrap_err(), AccessError::UnknownGroup);
    let good = SignedGroupKey::issue(bob.device(0), TENANT, "g", pk, "bob", "laptop");
    w.state.create_group(bob.actor(0), "g", pk, sealed, None, *good.signature()).unwrap();

    // What a reader checks: the creator's certificate with the creator's (signed) user keys,
    // then the device's signature of the group key. It still holds once the device is revoked.
    let check = |state: &AccessState| {
        let signed = state.signed_group_key("g").unwrap().clone();
        let cert = state.device_certificate(&signed.creator_user, &signed.creator_device).unwrap();
        let creator = state.signed_user_keys(&signed.creator_user).unwrap();
        creator.verify(TENANT)?;
        signed.verify(TENANT, cert, &creator.keys.signing)?;
        assert_eq!(signed.public_key, pk);
        Ok::<_, AccessError>(())
    };
    assert_eq!(check(&w.state), Ok(()));
    w.state.revoke_device(bob.actor(1), "laptop").unwrap();
    assert_eq!(check(&w.state), Ok(()));

    // A decrypt carries the author's signed keys; they verify, and a swapped author user is
    // refused before anything is decrypted.
    w.encrypt(&alice, "d", b"body", &[Recipient::User("bob".into())]);
    let grant = w.state.decrypt(bob.actor(1), "d").unwrap();
    assert_eq!(grant.author_user.verify(TENANT), Ok(()));
    assert_eq!(grant.open(bob.device(1)).unwrap().1, "alice");
    let mut swapped = grant.clone();
    swapped.author_user = w.state.signed_user_keys("carol").unwrap();
    assert_eq!(swapped.open(bob.device(1)).unwrap_err(), AccessError::Certificate);
}

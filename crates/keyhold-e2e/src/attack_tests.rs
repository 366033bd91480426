//! An attacker holding the server's whole database and every key the server holds tries every
//! one of them, and every transform it can apply, on every stored ciphertext. Nothing opens.
//! (Issue 9: "a test tries every server-held key and transform on every stored ciphertext".)

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;

use crate::access::{AccessState, Actor, DeviceCertificate};
use crate::document::{self, DOCUMENT_KEY_INFO, Recipient};
use crate::keys::{
    DeviceKeys, KeySealedToPublicKey, PassphraseCost, PassphraseSealedKey, UserKeys,
};
use crate::pre::{self, PrivateKey};
use crate::trust::{SignedGroupKey, SignedUserKeys};

const CHEAP: PassphraseCost = PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 };

struct Member {
    id: &'static str,
    keys: UserKeys,
    devices: Vec<DeviceKeys>,
}

/// Users with devices (one revoked), a group with a member added and one removed, documents
/// to the group, to a user and to both: every kind of record the server keeps.
fn populated(rng: &mut ChaCha20Rng) -> (AccessState, Vec<Member>, PrivateKey, Vec<&'static [u8]>) {
    let mut state = AccessState::new("acme");
    let mut members = Vec::new();
    for id in ["alice", "bob", "carol"] {
        let keys = UserKeys::generate(rng);
        let passphrase = format!("{id} passphrase");
        let sealed = PassphraseSealedKey::seal(&keys, passphrase.as_bytes(), CHEAP, rng).unwrap();
        let signed = SignedUserKeys::issue(&keys, "acme", id);
        state.create_user(id, sealed, *signed.signature()).unwrap();
        let mut devices = Vec::new();
        for name in ["laptop", "phone"] {
            let device = DeviceKeys::generate(rng);
            let cert = DeviceCertificate::issue(&keys, id, name, device.public());
            let tk = pre::transform_key(keys.encryption_key(), &device.public().encryption, rng);
            state.authorize_device(cert, tk).unwrap();
            devices.push(device);
        }
        members.push(Member { id, keys, devices });
    }
    let alice = Actor { user: "alice", device: "laptop" };
    let group_key = PrivateKey::generate(rng);
    let sealed =
        KeySealedToPublicKey::seal(&group_key, &members[0].keys.public().encryption, rng).unwrap();
    let own = pre::transform_key(&group_key, &members[0].keys.public().encryption, rng);
    let signed = SignedGroupKey::issue(
        &members[0].devices[0],
        "acme",
        "org",
        group_key.public_key(),
        "alice",
        "laptop",
    );
    state
        .create_group(alice, "org", group_key.public_key(), sealed, Some(own), *signed.signature())
        .unwrap();
    for m in &members[1..] {
        let tk = pre::transform_key(&group_key, &m.keys.public().encryption, rng);
        state.add_member(alice, "org", m.id, tk).unwrap();
    }
    let bodies: Vec<&'static [u8]> =
        vec![b"secret one: to the group", b"secret two: to bob", b"secret three: to both"];
    let group_pk = group_key.public_key();
    let bob_pk = members[1].keys.public().encryption;
    let recipients = [
        vec![(Recipient::Group("org".into()), group_pk)],
        vec![(Recipient::User("bob".into()), bob_pk)],
        vec![(Recipient::Group("org".into()), group_pk), (Recipient::User("bob".into()), bob_pk)],
    ];
    for (i, (body, to)) in bodies.iter().zip(recipients).enumerate() {
        let (doc, grants) =
            document::encrypt(&format!("doc-{i}"), body, &members[0].devices[0], &to, rng).unwrap();
        state.create_document(alice, doc, grants).unwrap();
    }
    // Carol leaves after the documents were written; bob loses his phone.
    state.remove_member(alice, "org", "carol").unwrap();
    state.revoke_device(Actor { user: "bob", device: "laptop" }, "phone").unwrap();
    (state, members, group_key, bodies)
}

#[test]
fn the_servers_whole_database_and_keys_open_no_document() {
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let (mut state, members, group_key, bodies) = populated(&mut rng);
    let material = state.server_material();

    // Ground truth: the documents do open for their readers, and these are their keys.
    let mut secrets: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
    for (i, body) in bodies.iter().enumerate() {
        let g =
            state.decrypt(Actor { user: "bob", device: "laptop" }, &format!("doc-{i}")).unwrap();
        let (plain, _) = g.open(&members[1].devices[0]).unwrap();
        assert_eq!(&plain[..], *body);
        let m = pre::decrypt(&g.value, members[1].devices[0].encryption_key()).unwrap();
        secrets.push(m.derive_key(DOCUMENT_KEY_INFO).to_vec());
    }
    secrets.push(group_key.to_bytes().to_vec());
    for m in &members {
        secrets.push(m.keys.encryption_key().to_bytes().to_vec());
        for d in &m.devices {
            secrets.push(d.to_bytes()[1..33].to_vec());
            secrets.push(d.to_bytes()[33..].to_vec());
        }
    }

    // 1. No secret appears anywhere in the stored bytes.
    let mut blob = Vec::new();
    material.sealed_user_keys.iter().for_each(|k| blob.extend(k.to_bytes()));
    material.transform_keys.iter().for_each(|k| blob.extend(k.to_bytes()));
    material.sealed_group_keys.iter().for_each(|k| blob.extend(k.to_bytes()));
    material.documents.iter().for_each(|d| blob.extend(d.to_bytes()));
    material.grants.iter().for_each(|g| blob.extend(g.to_bytes()));
    for c in &material.certificates {
        blob.extend(c.keys.encryption.to_bytes());
        blob.extend(c.keys.signing.as_bytes());
        blob.extend(c.signature());
    }
    for s in &secrets {
        assert!(!blob.windows(s.len()).any(|w| w == &s[..]), "a secret is stored in the clear");
    }

    // 2. Every G_T element reachable with every transform key (two hops, any order), unmasked
    // every way the keys allow, tried as the document key of every document and as the key
    // of every sealed group key.
    let mut values: Vec<_> = material.grants.iter().map(|g| g.value().clone()).collect();
    values.extend(material.sealed_group_keys.iter().map(|k| k.value().clone()));
    let mut tried = 0usize;
    for v in &values {
        for candidate in pre::attack_candidates(v, &material.transform_keys) {
            for d in &material.documents {
                assert!(
                    d.open_with(&candidate).is_err(),
                    "a server-computable value opened {}",
                    d.id()
                );
            }
            for k in &material.sealed_group_keys {
                assert!(
                    k.open_with(&candidate).is_err(),
                    "a server-computable value opened a group key"
                );
            }
            tried += 1;
        }
    }
    assert!(tried > 5_000, "only {tried} candidates");

    // 3. Every 32-byte window of the stored bytes, as a raw AES key on every document and (at
    // every 16-byte offset) as a private key on every stored value.
    for w in blob.windows(32) {
        let raw: [u8; 32] = w.try_into().unwrap();
        for d in &material.documents {
            assert!(!d.open_with_raw_key(&raw));
        }
    }
    for w in blob.chunks_exact(16).zip(blob.chunks_exact(16).skip(1)) {
        let raw: [u8; 32] = [w.0, w.1].concat().try_into().unwrap();
        if let Ok(sk) = PrivateKey::from_bytes(&raw) {
            for v in &values {
                assert!(pre::decrypt(v, &sk).is_err());
            }
        }
    }
    // 4. The passphrase-sealed user keys do not open without the passphrase.
    for k in &material.sealed_user_keys {
        for guess in [&b""[..], b"password", b"alice", b"passphrase"] {
            assert!(k.open(guess).is_err());
        }
    }
}

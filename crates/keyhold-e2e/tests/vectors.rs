//! Test vectors.
//!
//! - RFC 9380 appendix J.10.1 (`BLS12381G2_XMD:SHA-256_SSWU_RO_`): the hash to G2 that the scheme's
//!   `H2` is, computed by the library we use, called the way `pre` calls it.
//! - Bilinearity of the pairing, the property the scheme rests on.
//! - Keyhold's own vectors (tests/vectors/pre-v1.json): keys, a value, a transform key and one- and
//!   two-hop transforms, as bytes. The stored values must decrypt to the stored key, and the same
//!   seed must give the same bytes, so an accidental change of the algorithm or the encoding fails
//!   here. Regenerate (only for a deliberate format change, with a new version byte) with
//!   `KEYHOLD_WRITE_VECTORS=1 cargo test -p keyhold-e2e --test vectors`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use blstrs::{G1Projective, G2Projective, Scalar, pairing};
use group::{Curve as _, Group as _};
use keyhold_e2e::pre::{self, EncryptedValue, PrivateKey, TransformKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;

const RFC9380_DST: &[u8] = b"QUUX-V01-CS02-with-BLS12381G2_XMD:SHA-256_SSWU_RO_";

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn hash_to_g2_matches_rfc_9380_appendix_j_10_1() {
    // (msg, P.x0, P.x1, P.y0, P.y1)
    let vectors = [
        (
            "",
            "0141ebfbdca40eb85b87142e130ab689c673cf60f1a3e98d69335266f30d9b8d4ac44c1038e9dcdd5393faf5c41fb78a",
            "05cb8437535e20ecffaef7752baddf98034139c38452458baeefab379ba13dff5bf5dd71b72418717047f5b0f37da03d",
            "0503921d7f6a12805e72940b963c0cf3471c7b2a524950ca195d11062ee75ec076daf2d4bc358c4b190c0c98064fdd92",
            "12424ac32561493f3fe3c260708a12b7c620e7be00099a974e259ddc7d1f6395c3c811cdd19f1e8dbf3e9ecfdcbab8d6",
        ),
        (
            "abcdef0123456789",
            "121982811d2491fde9ba7ed31ef9ca474f0e1501297f68c298e9f4c0028add35aea8bb83d53c08cfc007c1e005723cd0",
            "190d119345b94fbd15497bcba94ecf7db2cbfd1e1fe7da034d26cbba169fb3968288b3fafb265f9ebd380512a71c3f2c",
            "05571a0f8d3c08d094576981f4a3b8eda0a8e771fcdcc8ecceaf1356a6acf17574518acb506e435b639353c2e14827c8",
            "0bb5e7572275c567462d91807de765611490205a941a5a6af3b1691bfe596c31225d3aabdf15faff860cb4ef17c7c3be",
        ),
    ];
    for (msg, x0, x1, y0, y1) in vectors {
        // The uncompressed encoding is x.c1 ‖ x.c0 ‖ y.c1 ‖ y.c0, big-endian.
        let expected = [unhex(x1), unhex(x0), unhex(y1), unhex(y0)].concat();
        let p = G2Projective::hash_to_curve(msg.as_bytes(), RFC9380_DST, &[]).to_affine();
        assert_eq!(p.to_uncompressed().to_vec(), expected, "msg {msg:?}");
    }
}

#[test]
fn the_pairing_is_bilinear() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for _ in 0..4 {
        let (a, b) =
            (<Scalar as ff::Field>::random(&mut rng), <Scalar as ff::Field>::random(&mut rng));
        let lhs = pairing(
            &(G1Projective::generator() * a).to_affine(),
            &(G2Projective::generator() * b).to_affine(),
        );
        let rhs = blstrs::Gt::generator() * (a * b);
        assert_eq!(lhs, rhs);
    }
}

/// The byte strings of the vector file, made from one seed.
fn generate() -> Vec<(&'static str, String)> {
    let mut rng = ChaCha20Rng::seed_from_u64(0x006b_6579_686f_6c64);
    let group = PrivateKey::generate(&mut rng);
    let user = PrivateKey::generate(&mut rng);
    let device = PrivateKey::generate(&mut rng);
    let m = pre::Plaintext::generate(&mut rng);
    let level1 = pre::encrypt(&m, &group.public_key(), &mut rng);
    let group_to_user = pre::transform_key(&group, &user.public_key(), &mut rng);
    let user_to_device = pre::transform_key(&user, &device.public_key(), &mut rng);
    let hop1 = pre::transform(&level1, &group_to_user).unwrap();
    let hop2 = pre::transform(&hop1, &user_to_device).unwrap();
    vec![
        ("group_private_key", hex::encode(*group.to_bytes())),
        ("user_private_key", hex::encode(*user.to_bytes())),
        ("device_private_key", hex::encode(*device.to_bytes())),
        ("group_public_key", hex::encode(group.public_key().to_bytes())),
        ("derived_key_info_test", hex::encode(*m.derive_key(b"test"))),
        ("level1", hex::encode(level1.to_bytes())),
        ("transform_key_group_to_user", hex::encode(group_to_user.to_bytes())),
        ("transform_key_user_to_device", hex::encode(user_to_device.to_bytes())),
        ("hop1", hex::encode(hop1.to_bytes())),
        ("hop2", hex::encode(hop2.to_bytes())),
    ]
}

/// Seeds for the `e2e_formats` fuzz target (fuzz/corpus/e2e_formats), one per parser, written
/// with the vectors.
fn write_fuzz_seeds() {
    use keyhold_e2e::keys::{
        DeviceKeys, KeySealedToPublicKey, PassphraseCost, PassphraseSealedKey, UserKeys,
    };
    use keyhold_e2e::{Recipient, document};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/e2e_formats");
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let author = DeviceKeys::generate(&mut rng);
    let reader = PrivateKey::generate(&mut rng);
    let (doc, grants) = document::encrypt(
        "seed-doc",
        b"fuzz seed",
        &author,
        &[(Recipient::Group("seed-group".into()), reader.public_key())],
        &mut rng,
    )
    .unwrap();
    let cheap = PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 };
    let sealed_user =
        PassphraseSealedKey::seal(&UserKeys::generate(&mut rng), b"p", cheap, &mut rng).unwrap();
    let sealed_group = KeySealedToPublicKey::seal(&reader, &reader.public_key(), &mut rng).unwrap();
    for (name, selector, bytes) in [
        ("document", 2u8, doc.to_bytes()),
        ("grant", 3, grants[0].to_bytes()),
        ("sealed-user-keys", 4, sealed_user.to_bytes()),
        ("sealed-group-key", 5, sealed_group.to_bytes()),
    ] {
        std::fs::write(format!("{dir}/{name}"), [&[selector][..], &bytes].concat()).unwrap();
    }
}

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/pre-v1.json");

#[test]
fn keyhold_transform_encryption_vectors() {
    let generated = generate();
    if std::env::var_os("KEYHOLD_WRITE_VECTORS").is_some() {
        let map: serde_json::Map<_, _> = generated
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.clone())))
            .collect();
        std::fs::write(VECTORS, serde_json::to_string_pretty(&map).unwrap() + "\n").unwrap();
        write_fuzz_seeds();
    }
    let stored: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let get = |k: &str| unhex(stored[k].as_str().unwrap());
    let key = |k: &str| PrivateKey::from_bytes(&get(k).try_into().unwrap()).unwrap();
    let expected = get("derived_key_info_test");

    // The stored bytes decrypt, at every level, to the stored key, each with its own private key.
    let level1 = EncryptedValue::from_bytes(&get("level1")).unwrap();
    assert_eq!(
        pre::decrypt(&level1, &key("group_private_key")).unwrap().derive_key(b"test").to_vec(),
        expected
    );
    let hop1 = EncryptedValue::from_bytes(&get("hop1")).unwrap();
    assert_eq!(
        pre::decrypt(&hop1, &key("user_private_key")).unwrap().derive_key(b"test").to_vec(),
        expected
    );
    let hop2 = EncryptedValue::from_bytes(&get("hop2")).unwrap();
    assert_eq!(
        pre::decrypt(&hop2, &key("device_private_key")).unwrap().derive_key(b"test").to_vec(),
        expected
    );
    assert!(pre::decrypt(&hop2, &key("user_private_key")).is_err());
    // Transforming the stored level-1 value with the stored keys gives the stored hops.
    let tk1 = TransformKey::from_bytes(&get("transform_key_group_to_user")).unwrap();
    let tk2 = TransformKey::from_bytes(&get("transform_key_user_to_device")).unwrap();
    assert_eq!(pre::transform(&level1, &tk1).unwrap(), hop1);
    assert_eq!(pre::transform(&hop1, &tk2).unwrap(), hop2);
    // And the same seed gives the same bytes.
    for (k, v) in &generated {
        assert_eq!(stored[*k].as_str().unwrap(), v, "{k} changed");
    }
}

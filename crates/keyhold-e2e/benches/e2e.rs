//! E2E costs (docs/benchmarks.md §7): encrypt a document to a group, the server's transforms
//! (group → user → device), the device's decrypt, and adding a member to groups of 10, 1,000 and
//! 100,000 members.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyhold_e2e::pre::{self, PrivateKey};
use keyhold_e2e::{
    AccessState, Actor, DeviceCertificate, DeviceKeys, KeySealedToPublicKey, PassphraseCost,
    PassphraseSealedKey, Recipient, SignedGroupKey, SignedUserKeys, UserKeys, document,
};
use rand_core::OsRng;

const CHEAP: PassphraseCost = PassphraseCost { memory_kib: 64, iterations: 1, parallelism: 1 };

fn document_paths(c: &mut Criterion) {
    let mut rng = OsRng;
    let group = PrivateKey::generate(&mut rng);
    let user = PrivateKey::generate(&mut rng);
    let device = DeviceKeys::generate(&mut rng);
    let group_to_user = pre::transform_key(&group, &user.public_key(), &mut rng);
    let user_to_device = pre::transform_key(&user, &device.public().encryption, &mut rng);
    let body = vec![7u8; 1024];
    let to = [(Recipient::Group("g".into()), group.public_key())];

    let mut g = c.benchmark_group("e2e");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encrypt_1KiB_to_a_group", |b| {
        b.iter(|| document::encrypt("doc", &body, &device, &to, &mut OsRng).unwrap())
    });
    let (doc, grants) = document::encrypt("doc", &body, &device, &to, &mut rng).unwrap();
    let value = grants[0].value().clone();
    g.bench_function("transform_one_hop", |b| {
        b.iter(|| pre::transform(&value, &group_to_user).unwrap())
    });
    g.bench_function("transform_group_to_user_to_device", |b| {
        b.iter(|| {
            let v = pre::transform(&value, &group_to_user).unwrap();
            pre::transform(&v, &user_to_device).unwrap()
        })
    });
    let at_device =
        pre::transform(&pre::transform(&value, &group_to_user).unwrap(), &user_to_device).unwrap();
    g.bench_function("decrypt_1KiB_on_device_after_two_hops", |b| {
        b.iter(|| doc.open(&at_device, device.encryption_key()).unwrap())
    });
    g.bench_function("decrypt_1KiB_level_one", |b| b.iter(|| doc.open(&value, &group).unwrap()));
    g.bench_function("make_transform_key", |b| {
        b.iter(|| pre::transform_key(&group, &user.public_key(), &mut OsRng))
    });
    g.finish();
}

/// Adding a member is one transform key (made on the admin's device) and one insert on the
/// server, whatever the group's size: no document and no other member is touched. The server
/// part is measured as add + remove of one member in groups of each size.
fn add_member(c: &mut Criterion) {
    let mut rng = OsRng;
    let admin_keys = UserKeys::generate(&mut rng);
    let admin_device = DeviceKeys::generate(&mut rng);
    let mut state = AccessState::new("acme");
    let sealed = PassphraseSealedKey::seal(&admin_keys, b"p", CHEAP, &mut rng).unwrap();
    let signed = SignedUserKeys::issue(&admin_keys, "acme", "admin");
    state.create_user("admin", sealed, *signed.signature()).unwrap();
    let cert = DeviceCertificate::issue(&admin_keys, "admin", "d", admin_device.public());
    let tk = pre::transform_key(
        admin_keys.encryption_key(),
        &admin_device.public().encryption,
        &mut rng,
    );
    state.authorize_device(cert, tk).unwrap();
    let admin = Actor { user: "admin", device: "d" };

    // Members share one key pair here so that 100,000 of them take seconds to set up, not
    // minutes; the server stores one transform key per member all the same.
    let member_keys = UserKeys::generate(&mut rng);
    let member_sealed = PassphraseSealedKey::seal(&member_keys, b"p", CHEAP, &mut rng).unwrap();
    let newcomer = UserKeys::generate(&mut rng);
    state
        .create_user(
            "newcomer",
            PassphraseSealedKey::seal(&newcomer, b"p", CHEAP, &mut rng).unwrap(),
            *SignedUserKeys::issue(&newcomer, "acme", "newcomer").signature(),
        )
        .unwrap();

    let mut g = c.benchmark_group("e2e_add_member");
    for size in [10usize, 1_000, 100_000] {
        let mut s = state.clone();
        let group = format!("group-{size}");
        let gk = PrivateKey::generate(&mut rng);
        let sealed =
            KeySealedToPublicKey::seal(&gk, &admin_keys.public().encryption, &mut rng).unwrap();
        let signed =
            SignedGroupKey::issue(&admin_device, "acme", &group, gk.public_key(), "admin", "d");
        s.create_group(admin, &group, gk.public_key(), sealed, None, *signed.signature()).unwrap();
        let to_member = pre::transform_key(&gk, &member_keys.public().encryption, &mut rng);
        for i in 0..size {
            let id = format!("m{i}");
            let signed = SignedUserKeys::issue(&member_keys, "acme", &id);
            s.create_user(&id, member_sealed.clone(), *signed.signature()).unwrap();
            s.add_member(admin, &group, &id, to_member.clone()).unwrap();
        }
        s.take_events();
        let to_newcomer = pre::transform_key(&gk, &newcomer.public().encryption, &mut rng);
        g.bench_with_input(BenchmarkId::new("server_add_and_remove", size), &size, |b, _| {
            b.iter(|| {
                s.add_member(admin, &group, "newcomer", to_newcomer.clone()).unwrap();
                s.remove_member(admin, &group, "newcomer").unwrap();
                s.take_events();
            })
        });
        g.bench_with_input(BenchmarkId::new("admin_device_transform_key", size), &size, |b, _| {
            b.iter(|| pre::transform_key(&gk, &newcomer.public().encryption, &mut OsRng))
        });
    }
    g.finish();
}

/// What a device checks before it uses a public key the service gave it (docs/e2e-crypto.md
/// §4.2): a user's signature of its keys; a group's key through its creator's certificate and
/// the creating device's signature; the pin lookup.
fn key_checks(c: &mut Criterion) {
    let mut rng = OsRng;
    let alice = UserKeys::generate(&mut rng);
    let laptop = DeviceKeys::generate(&mut rng);
    let cert = DeviceCertificate::issue(&alice, "alice", "laptop", laptop.public());
    let signed_user = SignedUserKeys::issue(&alice, "acme", "alice");
    let group = PrivateKey::generate(&mut rng).public_key();
    let signed_group = SignedGroupKey::issue(&laptop, "acme", "staff", group, "alice", "laptop");
    let alice_vk = alice.public().signing;
    let mut pins = keyhold_e2e::KeyPins::new();
    pins.check_user("alice", &alice_vk).unwrap();
    pins.check_group("staff", &group).unwrap();
    let mut g = c.benchmark_group("e2e_key_checks");
    g.bench_function("user_keys_signature", |b| b.iter(|| signed_user.verify("acme").unwrap()));
    g.bench_function("group_key_certificate_and_signature", |b| {
        b.iter(|| signed_group.verify("acme", &cert, &alice_vk).unwrap())
    });
    g.bench_function("pins_user_and_group", |b| {
        b.iter(|| {
            pins.check_user("alice", &alice_vk).unwrap();
            pins.check_group("staff", &group).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, document_paths, add_member, key_checks);
criterion_main!(benches);

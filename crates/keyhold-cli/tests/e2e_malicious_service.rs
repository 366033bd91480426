//! A malicious E2E service (docs/e2e-crypto.md §4.2, §5): a man in the middle in front of the
//! real broker of `keyhold up` swaps the public keys in its answers, as a broker whose code or
//! database was taken over could. The SDK's devices refuse every swap they can detect (a key
//! not signed by its owner: 1115; another key than the one pinned: 1116) and encrypt, seal and
//! grant nothing to a swapped key. What they cannot detect alone (a consistent forgery for a
//! user a device meets for the first time) shows in the fingerprints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use keyhold::e2e::{Device, E2eError, E2eService, Recipient};
use keyhold_e2e::wire::{self, CertificateView};
use keyhold_e2e::{
    DeviceCertificate, DeviceKeys, OsRng, PrivateKey, PublicKey, SignedGroupKey, SignedUserKeys,
    UserKeys,
};
use serde_json::{Value, json};

const TENANT: &str = "demo-tenant";

/// Top-level fields replaced in the JSON answer to `METHOD path` (a path after the tenant).
type Patches = Arc<Mutex<BTreeMap<(String, String), Value>>>;

#[derive(Clone)]
struct Mitm {
    broker: String,
    http: reqwest::Client,
    patches: Patches,
}

async fn forward(
    State(m): State<Mitm>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let mut req = m.http.request(
        reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
        format!("{}{path}", m.broker),
    );
    for (name, value) in &headers {
        if name.as_str().starts_with("keyhold-e2e-")
            || name == "authorization"
            || name == "content-type"
        {
            req = req.header(name.as_str(), value.as_bytes());
        }
    }
    let resp = req.body(body.to_vec()).send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let mut bytes = resp.bytes().await.unwrap().to_vec();
    let tail = path.strip_prefix(&format!("/api/v1/e2e/tenants/{TENANT}")).unwrap_or(&path);
    let patch = m.patches.lock().unwrap().get(&(method.to_string(), tail.to_owned())).cloned();
    let mut status = status;
    if let Some(Value::Object(patch)) = patch {
        // An answer the broker refused (a user it does not have) is invented whole.
        let mut answer: Value = if status.is_success() {
            serde_json::from_slice(&bytes).unwrap()
        } else {
            status = StatusCode::OK;
            json!({})
        };
        for (k, v) in patch {
            answer[k] = v;
        }
        bytes = serde_json::to_vec(&answer).unwrap();
    }
    (status, [("content-type", "application/json")], bytes)
}

/// Serves the man in the middle; returns its URL.
async fn mitm(broker: &str, patches: Patches) -> String {
    let state = Mitm { broker: broker.to_owned(), http: reqwest::Client::new(), patches };
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[track_caller]
fn code<T: std::fmt::Debug>(r: Result<T, E2eError>) -> u16 {
    r.expect_err("the device accepted a swapped key").code()
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(wire::b64::encode(bytes))
}

/// A user's keys as the service would show them, signed by `keys` for `user`.
fn user_view(keys: &UserKeys, user: &str) -> Value {
    let signed = SignedUserKeys::issue(keys, TENANT, user);
    serde_json::to_value(wire::UserKeysView::from(&signed)).unwrap()
}

/// Group "staff" as a service would show it with `key` for its key, signed by a fresh device
/// that `creator_keys` certifies as `user`'s `laptop` (a forgery unless those are the real keys).
fn forged_staff_view(creator_keys: &UserKeys, user: &str, key: PublicKey) -> Value {
    let device = DeviceKeys::generate(&mut OsRng);
    let cert = DeviceCertificate::issue(creator_keys, user, "laptop", device.public());
    let signed = SignedGroupKey::issue(&device, TENANT, "staff", key, user, "laptop");
    json!({
        "public_key": b64(&key.to_bytes()),
        "creator": serde_json::to_value(CertificateView::from(&cert)).unwrap(),
        "key_signature": b64(signed.signature()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_refuse_public_keys_a_malicious_service_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let up = common::up(dir.path());
    let patches = Patches::default();
    let url = mitm(&up.broker, patches.clone()).await;
    let service = E2eService::new(&url, TENANT).unwrap();
    let key = std::fs::read_to_string(dir.path().join(".keyhold/vendor-api-key")).unwrap();
    let vendor = service.vendor(key.trim());
    let alice = vendor.enroll_user("alice", b"alice pass", "laptop").await.unwrap();
    let bob = vendor.enroll_user("bob", b"bob pass", "laptop").await.unwrap();
    let carol = vendor.enroll_user("carol", b"carol pass", "laptop").await.unwrap();
    alice.create_group("staff", true).await.unwrap();
    let patch = |method: &str, tail: &str, fields: Value| {
        patches.lock().unwrap().insert((method.into(), tail.into()), fields);
    };
    let clear = || patches.lock().unwrap().clear();
    let mallory = UserKeys::generate(&mut OsRng);
    let mallory_group = PrivateKey::generate(&mut OsRng).public_key();

    // 1. Bob's encryption key swapped for the service's, bob's signature kept: nothing is
    //    encrypted, granted, added or sealed to it (1115), and nothing is pinned.
    patch(
        "GET",
        "/users/bob",
        json!({"encryption_key": b64(&mallory.public().encryption.to_bytes())}),
    );
    let to_bob = [Recipient::User("bob".into())];
    assert_eq!(code(alice.encrypt("d1", b"for bob", &to_bob).await), 1115);
    assert_eq!(code(alice.add_member("staff", "bob").await), 1115);
    assert_eq!(code(alice.add_admin("staff", "bob").await), 1115);
    // A user stored before keys were signed (no signature): refused the same way.
    patch("GET", "/users/bob", json!({"key_signature": ""}));
    assert_eq!(code(alice.user_public_keys("bob").await), 1115);
    clear();

    // 2. Bob's keys swapped whole for keys the service made and signed itself as "bob": a
    //    device that has met bob refuses them (1116). A device meeting "bob" for the first time
    //    cannot tell, but its fingerprint of bob differs from bob's own: compared out of band,
    //    the swap shows.
    let real = alice.user_public_keys("bob").await.unwrap();
    assert_eq!(alice.key_pins().user("bob"), Some(real.signing));
    let real_fingerprint = bob.fingerprint("bob").await.unwrap();
    assert_eq!(alice.fingerprint("bob").await.unwrap(), real_fingerprint);
    patch("GET", "/users/bob", user_view(&mallory, "bob"));
    assert_eq!(code(alice.user_public_keys("bob").await), 1116);
    assert_eq!(code(alice.encrypt("d2", b"for bob", &to_bob).await), 1116);
    let dave = vendor.enroll_user("dave", b"dave pass", "laptop").await.unwrap();
    assert_eq!(dave.user_public_keys("bob").await.unwrap().encryption, mallory.public().encryption);
    assert_ne!(dave.fingerprint("bob").await.unwrap(), real_fingerprint);
    // Mallory's keys signed for another user, shown as bob's: refused even at first sight.
    patch("GET", "/users/bob", user_view(&mallory, "mallory"));
    let erin = vendor.enroll_user("erin", b"erin pass", "laptop").await.unwrap();
    assert_eq!(code(erin.user_public_keys("bob").await), 1115);
    clear();
    assert_eq!(alice.user_public_keys("bob").await.unwrap(), real);

    // 3. A device's own user's keys are pinned at enrollment (authenticated by the passphrase),
    //    so the service cannot swap them even once: the new group's private key would be
    //    sealed to them. The pins survive saving and loading the device file, and a device
    //    added later with the passphrase pins them too.
    patch("GET", "/users/alice", user_view(&mallory, "alice"));
    assert_eq!(code(alice.create_group("g2", true).await), 1116);
    let file = dir.path().join("alice-laptop.json");
    alice.save(&file).unwrap();
    let reloaded = Device::load(&file).unwrap();
    assert!(!reloaded.pins_changed());
    assert_eq!(code(reloaded.create_group("g2", true).await), 1116);
    clear();
    let phone = vendor.add_device("alice", b"alice pass", "phone").await.unwrap();
    patch("GET", "/users/alice", user_view(&mallory, "alice"));
    assert_eq!(code(phone.create_group("g2", true).await), 1116);
    clear();

    // 4. The group's key swapped, with its creator's signature kept (1115); with a signature by
    //    a device the service made, under a certificate it signed itself (1115: alice's real
    //    key does not verify it); as a group stored before keys were signed (1115).
    let to_staff = [Recipient::Group("staff".into())];
    patch("GET", "/groups/staff", json!({"public_key": b64(&mallory_group.to_bytes())}));
    assert_eq!(code(carol.encrypt("d3", b"for staff", &to_staff).await), 1115);
    patch("GET", "/groups/staff", forged_staff_view(&mallory, "alice", mallory_group));
    assert_eq!(code(carol.encrypt("d3", b"for staff", &to_staff).await), 1115);
    assert_eq!(code(alice.add_member("staff", "carol").await), 1115);
    patch("GET", "/groups/staff", json!({"creator": null, "key_signature": ""}));
    assert_eq!(code(carol.encrypt("d3", b"for staff", &to_staff).await), 1115);
    clear();

    // 5. The author's keys swapped in a decrypt's answer: the document is not opened. Bob has
    //    met alice (1116); frank has not, and mallory's keys fail the author's certificate
    //    (1110) and leave no pin behind: the honest answer then opens.
    let frank = vendor.enroll_user("frank", b"frank pass", "laptop").await.unwrap();
    let to_both = [Recipient::User("bob".into()), Recipient::User("frank".into())];
    alice.encrypt("d4", b"for bob, really", &to_both).await.unwrap();
    bob.user_public_keys("alice").await.unwrap();
    patch("POST", "/documents/d4/decrypt", json!({"author_user": user_view(&mallory, "alice")}));
    assert_eq!(code(bob.decrypt("d4").await), 1116);
    assert_eq!(code(frank.decrypt("d4").await), 1110);
    clear();
    assert_eq!(&frank.decrypt("d4").await.unwrap().0[..], b"for bob, really");
    assert_eq!(
        frank.fingerprint("alice").await.unwrap(),
        alice.fingerprint("alice").await.unwrap()
    );

    // 6. With an honest service everything works, with the keys pinned above.
    let (plain, author) = bob.decrypt("d4").await.unwrap();
    assert_eq!((&plain[..], author.as_str()), (&b"for bob, really"[..], "alice"));
    alice.add_member("staff", "bob").await.unwrap();
    carol.encrypt("d5", b"for staff", &to_staff).await.unwrap();
    let (plain, author) = bob.decrypt("d5").await.unwrap();
    assert_eq!((&plain[..], author.as_str()), (&b"for staff"[..], "carol"));
    assert_eq!(code(dave.encrypt("d6", b"for bob", &to_bob).await), 1116, "dave pinned mallory's");

    // 7. A whole forged group: the service says "staff" was made by a user "eve" it invented,
    //    whose keys, device certificate and group signature it serves consistently. Every
    //    signature checks out; the group's pin catches it on every device that used the group
    //    (1116), and only a device meeting "staff" for the first time would be fooled.
    let eve = UserKeys::generate(&mut OsRng);
    patch("GET", "/users/eve", user_view(&eve, "eve"));
    patch("GET", "/groups/staff", forged_staff_view(&eve, "eve", mallory_group));
    assert_eq!(code(carol.encrypt("d7", b"for staff", &to_staff).await), 1116);
    assert_eq!(code(alice.encrypt("d7", b"for staff", &to_staff).await), 1116);
    frank.encrypt("d7", b"for staff", &to_staff).await.expect("a first sight cannot be checked");
}

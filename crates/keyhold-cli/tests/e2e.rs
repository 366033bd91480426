//! `keyhold e2e` against `keyhold up`: users and devices enrolled, a group, a document encrypted
//! to it, a member added afterwards, a device revoked, a member removed; and the audit events of
//! all of it in the tenant's audit trail (issue 9).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::BIN;

fn e2e(dir: &Path, broker: &str, passphrase: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("e2e")
        .args(args)
        .current_dir(dir)
        .env("KEYHOLD_BROKER_URL", broker)
        .env("KEYHOLD_E2E_PASSPHRASE", passphrase)
        .env_remove("KEYHOLD_E2E_DEVICE_FILE")
        .env_remove("KEYHOLD_TENANT")
        .output()
        .unwrap()
}

#[track_caller]
fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

#[track_caller]
fn refused(o: Output, code: &str) {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a refusal with {code}");
    assert!(err.contains(code), "expected code {code} in: {err}");
}

#[test]
fn groups_members_devices_and_documents_through_keyhold_up() {
    let dir = tempfile::tempdir().unwrap();
    let up = common::up(dir.path());
    let (d, b) = (dir.path(), up.broker.as_str());
    assert!(b.starts_with("http://"), "no broker URL: {b:?}");

    let alice = ["--device-file", "alice-laptop.json"];
    let bob = ["--device-file", "bob-laptop.json"];
    let bob_phone = ["--device-file", "bob-phone.json"];
    ok(e2e(
        d,
        b,
        "alice's passphrase",
        &[&["enroll", "--user", "alice", "--device", "laptop"][..], &alice].concat(),
    ));
    ok(e2e(
        d,
        b,
        "bob's passphrase",
        &[&["enroll", "--user", "bob", "--device", "laptop"][..], &bob].concat(),
    ));
    // A further device needs the user's passphrase.
    let wrong = e2e(
        d,
        b,
        "not bob's",
        &[&["add-device", "--user", "bob", "--device", "phone"][..], &bob_phone].concat(),
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("passphrase"));
    ok(e2e(
        d,
        b,
        "bob's passphrase",
        &[&["add-device", "--user", "bob", "--device", "phone"][..], &bob_phone].concat(),
    ));
    let key_file = std::fs::metadata(d.join("bob-phone.json")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key_file.permissions()) & 0o777, 0o600);

    ok(e2e(d, b, "", &["group", "create", "employees", "--device-file", "alice-laptop.json"]));
    std::fs::write(d.join("plan.txt"), b"the plan, end to end").unwrap();
    ok(e2e(
        d,
        b,
        "",
        &[&["encrypt", "--id", "plan", "--in", "plan.txt", "--to", "group:employees"][..], &alice]
            .concat(),
    ));

    // Bob is not a member yet; added after the document was written, he reads it.
    refused(
        e2e(d, b, "", &[&["decrypt", "--id", "plan", "--out", "bob.txt"][..], &bob].concat()),
        "1108",
    );
    ok(e2e(
        d,
        b,
        "",
        &["group", "add-member", "employees", "bob", "--device-file", "alice-laptop.json"],
    ));
    ok(e2e(d, b, "", &[&["decrypt", "--id", "plan", "--out", "bob.txt"][..], &bob].concat()));
    assert_eq!(std::fs::read(d.join("bob.txt")).unwrap(), b"the plan, end to end");

    // Keys each device checked are pinned in its file: alice's laptop pinned bob's key when she
    // added him, bob's laptop alice's (the author) when he decrypted. Their fingerprints of
    // each other match what each user's own device prints.
    let pins = |file: &str| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(file)).unwrap()).unwrap();
        v["pins"].clone()
    };
    assert!(pins("alice-laptop.json")["users"]["bob"].is_string(), "{}", pins("alice-laptop.json"));
    assert!(pins("alice-laptop.json")["groups"]["employees"].is_string());
    assert!(pins("bob-laptop.json")["users"]["alice"].is_string(), "{}", pins("bob-laptop.json"));
    let fingerprint = |device: &[&str], user: &str| {
        let o = ok(e2e(d, b, "", &[&["fingerprint", user][..], device].concat()));
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    let bobs = fingerprint(&bob, "bob");
    assert_eq!(bobs.len(), 39, "{bobs}");
    assert_eq!(fingerprint(&alice, "bob"), bobs);
    assert_eq!(fingerprint(&bob_phone, "bob"), bobs);
    assert_eq!(fingerprint(&bob, "alice"), fingerprint(&alice, "alice"));
    assert_ne!(fingerprint(&bob, "alice"), bobs);
    ok(e2e(
        d,
        b,
        "",
        &[&["decrypt", "--id", "plan", "--out", "phone.txt"][..], &bob_phone].concat(),
    ));

    // Bob's phone is lost: revoked from his laptop. The phone fails, the laptop still reads.
    ok(e2e(d, b, "", &[&["revoke-device", "phone"][..], &bob].concat()));
    refused(
        e2e(
            d,
            b,
            "",
            &[&["decrypt", "--id", "plan", "--out", "phone2.txt"][..], &bob_phone].concat(),
        ),
        "1102",
    );
    assert!(!d.join("phone2.txt").exists());
    ok(e2e(d, b, "", &[&["decrypt", "--id", "plan", "--out", "bob2.txt"][..], &bob].concat()));

    // Removed from the group, Bob's next decrypt fails; Alice still reads.
    ok(e2e(
        d,
        b,
        "",
        &["group", "remove-member", "employees", "bob", "--device-file", "alice-laptop.json"],
    ));
    refused(
        e2e(d, b, "", &[&["decrypt", "--id", "plan", "--out", "bob3.txt"][..], &bob].concat()),
        "1108",
    );
    ok(e2e(d, b, "", &[&["decrypt", "--id", "plan", "--out", "alice.txt"][..], &alice].concat()));

    // A direct grant, then its revocation.
    ok(e2e(d, b, "", &[&["grant", "--id", "plan", "--to", "user:bob"][..], &alice].concat()));
    ok(e2e(d, b, "", &[&["decrypt", "--id", "plan", "--out", "bob4.txt"][..], &bob].concat()));
    ok(e2e(d, b, "", &[&["revoke", "--id", "plan", "--from", "user:bob"][..], &alice].concat()));
    refused(
        e2e(d, b, "", &[&["decrypt", "--id", "plan", "--out", "bob5.txt"][..], &bob].concat()),
        "1108",
    );

    // Every change and decrypt reaches the tenant's audit trail (through the proxy that holds
    // the broker's e2e-events lease), in order.
    let audit = d.join(".keyhold/audit/demo-tenant.jsonl");
    let wanted = [
        "e2e.user.create",
        "e2e.device.authorize",
        "e2e.group.create",
        "e2e.document.create",
        "e2e.document.decrypt_denied",
        "e2e.group.member_add",
        "e2e.document.decrypt",
        "e2e.device.revoke",
        "e2e.group.member_remove",
        "e2e.document.grant",
        "e2e.document.revoke",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let missing: Vec<_> =
            wanted.iter().filter(|a| !text.contains(&format!("\"{a}\""))).collect();
        if missing.is_empty() {
            let last_remove = text.find("\"e2e.group.member_remove\"").unwrap();
            let first_add = text.find("\"e2e.group.member_add\"").unwrap();
            assert!(first_add < last_remove, "events out of order");
            break;
        }
        assert!(Instant::now() < deadline, "not in the audit trail after 30 s: {missing:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let verify = Command::new(BIN)
        .args(["audit", "verify", ".keyhold/audit/demo-tenant.jsonl"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

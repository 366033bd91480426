//! The end-to-end encryption service of the broker (issue 9), over a real port, on SQLite and
//! (when `KEYHOLD_TEST_POSTGRES_URL` is set) PostgreSQL: real keys from keyhold-e2e, every
//! device request signed, and each operation checked against keyhold-e2e's `AccessState`, the
//! reference model of the rules (tests/common/e2e.rs). The scenarios are those of
//! crates/keyhold-e2e/tests/access.rs, over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::e2e::{
    CHEAP, Person, Resp, TENANT, World, group_statement, route, unix_now, user_statement,
};
use common::{PROXY_TOKEN, TEST_MAX_BODY_BYTES, TestBroker, databases};
use keyhold_e2e::access::E2eAction;
use keyhold_e2e::pre;
use keyhold_e2e::wire::{self, AuthorizeDevice, CertificateView};
use keyhold_e2e::{
    AccessError, Actor, DeviceCertificate, DeviceKeys, DocumentError, EncryptedDocument,
    KeySealedToPublicKey, PassphraseCost, PassphraseSealedKey, PrivateKey, Recipient,
    SignedGroupKey, SignedUserKeys, UserKeys,
};
use reqwest::Method;
use serde_json::{Value, json};

fn group(id: &str) -> Recipient {
    Recipient::Group(id.into())
}

fn user(id: &str) -> Recipient {
    Recipient::User(id.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_encryption_reads_it_and_a_removed_member_no_longer_does() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 1).await;
        let alice = w.user("alice", "a-pass").await;
        let bob = w.user("bob", "b-pass").await;
        w.group(&alice, "employees").await;
        w.encrypt(&alice, "plan", b"the plan", &[group("employees")]).await;
        let stored_before = w.stored_documents().await;
        assert_eq!(stored_before, w.model_documents(), "{}", db.name);

        assert_eq!(w.read(&bob, 0, "plan").await.unwrap_err(), AccessError::NoAccess);
        // Added after the document was encrypted: no re-encryption, a transform key.
        w.add_member(&alice, "employees", &bob).await.unwrap();
        let (resp, grant) = w.decrypt(&bob, 0, "plan").await;
        assert_eq!(resp.body["via_group"], "employees");
        let grant = grant.unwrap();
        let (plain, author) = grant.open(bob.device(0)).unwrap();
        assert_eq!((&plain[..], author), (&b"the plan"[..], "alice"));

        w.remove_member(&alice, 0, "employees", "bob").await.unwrap();
        let (resp, refused) = w.decrypt(&bob, 0, "plan").await;
        assert_eq!((resp.status, resp.code()), (403, 1108), "{}: {resp:?}", db.name);
        assert_eq!(refused.unwrap_err(), AccessError::NoAccess);
        assert_eq!(w.read(&alice, 0, "plan").await.unwrap(), b"the plan");
        // Nothing was re-encrypted: the stored document is byte for byte what was first stored.
        assert_eq!(w.stored_documents().await, stored_before, "{}", db.name);
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_gets_401_while_the_same_users_other_device_still_decrypts() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 2).await;
        let alice = w.user("alice", "a-pass").await;
        let mut bob = w.user("bob", "b-pass").await;
        w.add_device(&mut bob, "phone").await;
        w.group(&alice, "team").await;
        w.add_member(&alice, "team", &bob).await.unwrap();
        w.encrypt(&alice, "memo", b"memo body", &[group("team")]).await;
        assert_eq!(w.read(&bob, 1, "memo").await.unwrap(), b"memo body");

        // Before it is lost, the phone writes a note to alice.
        w.encrypt_from(&bob, 1, "note", b"from the phone", &[user("alice")]).await;
        let stored_before = w.stored_documents().await;

        // Bob's laptop revokes his lost phone.
        w.revoke_device(&bob, 0, "phone").await.unwrap();
        let (resp, refused) = w.decrypt(&bob, 1, "memo").await;
        assert_eq!((resp.status, resp.code()), (401, 1102), "{}: {resp:?}", db.name);
        assert_eq!(refused.unwrap_err(), AccessError::UnknownDevice);
        // Its other requests too; its certificate stays (what it wrote keeps its author).
        let again = w.call(&bob, 1, Method::GET, &route("/users/alice"), None).await;
        assert_eq!((again.status, again.code()), (401, 1102));
        let cert = w.certificate(&alice, 0, "bob", "phone").await.unwrap();
        assert_eq!(cert.keys, bob.device(1).public());
        let (_, note) = w.decrypt(&alice, 0, "note").await;
        let note = note.unwrap();
        assert!(note.author_revoked);
        let (plain, author) = note.open(alice.device(0)).unwrap();
        assert_eq!((&plain[..], author), (&b"from the phone"[..], "bob"));
        // Its id is not reused.
        let other = DeviceKeys::generate(&mut w.rng);
        let cert = DeviceCertificate::issue(&bob.keys, "bob", "phone", other.public());
        let tk =
            pre::transform_key(bob.keys.encryption_key(), &other.public().encryption, &mut w.rng);
        assert_eq!(w.authorize("bob", cert, tk).await.unwrap_err(), AccessError::Exists);
        assert_eq!(w.read(&bob, 0, "memo").await.unwrap(), b"memo body");
        assert_eq!(w.stored_documents().await, stored_before);

        // Alice cannot revoke bob's devices: not with her own device (another user's device)...
        let resp =
            w.call(&alice, 0, Method::DELETE, &route("/users/bob/devices/laptop"), None).await;
        assert_eq!((resp.status, resp.code()), (403, 1107), "{resp:?}");
        // ... nor by naming a device she does not have.
        let alice_keys = alice.device(0);
        let path = route("/users/alice/devices/laptop");
        let resp = w
            .signed_at(alice_keys, "alice", "phone", Method::DELETE, &path, None, unix_now())
            .await;
        assert_eq!((resp.status, resp.code()), (401, 1102), "{resp:?}");
        assert_eq!(
            w.model.revoke_device(Actor { user: "alice", device: "phone" }, "laptop").unwrap_err(),
            AccessError::UnknownDevice
        );
        // Revoking a device the user does not have: 404.
        assert_eq!(
            w.revoke_device(&bob, 0, "tablet").await.unwrap_err(),
            AccessError::UnknownDevice
        );
        assert_eq!(w.read(&bob, 0, "memo").await.unwrap(), b"memo body");
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_reads_what_was_shared_with_its_user_once_the_user_authorizes_it() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 3).await;
        let alice = w.user("alice", "a-pass").await;
        let carol_keys = UserKeys::generate(&mut w.rng);
        // Real Argon2id cost here: what a user's passphrase really protects.
        let sealed = PassphraseSealedKey::seal(
            &carol_keys,
            b"carol's passphrase",
            PassphraseCost::default(),
            &mut w.rng,
        )
        .unwrap();
        w.create_user("carol", sealed, user_statement(&carol_keys, "carol")).await.unwrap();
        w.encrypt(&alice, "for-carol", b"hello carol", &[user("carol")]).await;

        // Carol's first device: fetches her sealed keys (the vendor's backend hands them to
        // it), opens them with the passphrase.
        let fetched = w.sealed_user_keys("carol").await.unwrap();
        assert!(fetched.open(b"wrong passphrase").is_err());
        let opened = fetched.open(b"carol's passphrase").unwrap();
        let device = DeviceKeys::generate(&mut w.rng);
        let carol =
            Person { id: "carol".into(), keys: opened, devices: vec![("tablet".into(), device)] };
        // Not authorized yet: 401, and nothing recorded.
        let (resp, refused) = w.decrypt(&carol, 0, "for-carol").await;
        assert_eq!((resp.status, resp.code()), (401, 1102));
        assert_eq!(refused.unwrap_err(), AccessError::UnknownDevice);
        let cert =
            DeviceCertificate::issue(&carol.keys, "carol", "tablet", carol.device(0).public());
        let tk = pre::transform_key(
            carol.keys.encryption_key(),
            &carol.device(0).public().encryption,
            &mut w.rng,
        );
        w.authorize("carol", cert, tk).await.unwrap();
        let (_, grant) = w.decrypt(&carol, 0, "for-carol").await;
        let grant = grant.unwrap();
        let (plain, author) = grant.open(carol.device(0)).unwrap();
        assert_eq!((&plain[..], author), (&b"hello carol"[..], "alice"));
        assert_eq!(grant.via_group, None);
        // The author's certificate as anyone reads it from the broker.
        let cert = w.certificate(&carol, 0, "alice", "laptop").await.unwrap();
        assert_eq!(cert.keys.signing, *grant.document.author());
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_granted_and_revoked_per_user_and_per_group() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 4).await;
        let alice = w.user("alice", "a").await;
        let bob = w.user("bob", "b").await;
        let dan = w.user("dan", "d").await;
        w.group(&dan, "auditors").await;
        w.encrypt(&alice, "report", b"report body", &[user("alice")]).await;
        assert_eq!(w.read(&bob, 0, "report").await.unwrap_err(), AccessError::NoAccess);

        // Alice, who can read it, grants it to bob and to the auditors group; the document is
        // unchanged.
        let stored_before = w.stored_documents().await;
        let (_, mine) = w.decrypt(&alice, 0, "report").await;
        let mine = mine.unwrap();
        for r in [user("bob"), group("auditors")] {
            let pk = w.recipient_key(&alice, &r).await;
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
            w.grant(&alice, 0, grant).await.unwrap();
        }
        assert_eq!(w.read(&bob, 0, "report").await.unwrap(), b"report body");
        assert_eq!(w.read(&dan, 0, "report").await.unwrap(), b"report body");
        assert_eq!(w.stored_documents().await, stored_before);

        // Bob, a reader, may not replace the group's grant (the broker cannot tell whether it
        // holds the same key: this one is sealed to bob); the author may.
        let (_, bobs) = w.decrypt(&bob, 0, "report").await;
        let bobs = bobs.unwrap();
        let bobs_key = w.recipient_key(&bob, &user("bob")).await;
        let hijack = bobs
            .document
            .grant(
                &bobs.value,
                bob.device(0).encryption_key(),
                bob.device(0),
                group("auditors"),
                &bobs_key,
                &mut w.rng,
            )
            .unwrap();
        assert_eq!(w.grant(&bob, 0, hijack).await.unwrap_err(), AccessError::Exists);
        assert_eq!(w.read(&dan, 0, "report").await.unwrap(), b"report body");
        let group_key = w.recipient_key(&alice, &group("auditors")).await;
        let renewed = mine
            .document
            .grant(
                &mine.value,
                alice.device(0).encryption_key(),
                alice.device(0),
                group("auditors"),
                &group_key,
                &mut w.rng,
            )
            .unwrap();
        w.grant(&alice, 0, renewed).await.unwrap();
        assert_eq!(w.read(&dan, 0, "report").await.unwrap(), b"report body");

        // Bob may not revoke alice's grants; alice revokes bob; dan (the group's admin)
        // revokes the group's grant.
        assert_eq!(
            w.revoke(&bob, 0, "report", &group("auditors")).await.unwrap_err(),
            AccessError::Forbidden
        );
        w.revoke(&alice, 0, "report", &user("bob")).await.unwrap();
        assert_eq!(w.read(&bob, 0, "report").await.unwrap_err(), AccessError::NoAccess);
        // A grant that is not there any more.
        assert_eq!(
            w.revoke(&alice, 0, "report", &user("bob")).await.unwrap_err(),
            AccessError::NoAccess
        );
        w.revoke(&dan, 0, "report", &group("auditors")).await.unwrap();
        assert_eq!(w.read(&dan, 0, "report").await.unwrap_err(), AccessError::NoAccess);
        assert_eq!(w.read(&alice, 0, "report").await.unwrap(), b"report body");
        // A recipient kind that is neither: 400, code 1131.
        let resp = w
            .call(&alice, 0, Method::DELETE, &route("/documents/report/grants/team/x"), None)
            .await;
        assert_eq!((resp.status, resp.code()), (400, 1131));

        // Someone without access cannot store a grant, even a well-formed one of their own
        // making.
        let eve = w.user("eve", "e").await;
        let eve_key = w.user_keys(&eve, 0, "eve").await.unwrap().encryption;
        let (_, fake) = keyhold_e2e::document::encrypt(
            "report",
            b"other",
            eve.device(0),
            &[(user("eve"), eve_key)],
            &mut w.rng,
        )
        .unwrap();
        assert_eq!(w.grant(&eve, 0, fake[0].clone()).await.unwrap_err(), AccessError::NoAccess);
        // Nor a grant for a document that does not exist, nor one for an unknown recipient.
        let (_, orphan) = keyhold_e2e::document::encrypt(
            "nowhere",
            b"x",
            eve.device(0),
            &[(user("eve"), eve_key)],
            &mut w.rng,
        )
        .unwrap();
        assert_eq!(
            w.grant(&eve, 0, orphan[0].clone()).await.unwrap_err(),
            AccessError::UnknownDocument
        );
        let to_nobody = mine
            .document
            .grant(
                &mine.value,
                alice.device(0).encryption_key(),
                alice.device(0),
                user("nobody"),
                &eve_key,
                &mut w.rng,
            )
            .unwrap();
        assert_eq!(w.grant(&alice, 0, to_nobody).await.unwrap_err(), AccessError::UnknownUser);
        assert_eq!(w.stored_documents().await, stored_before);
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_documents_and_signatures_are_refused_with_a_clear_error() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 5).await;
        let alice = w.user("alice", "a").await;
        let mallory = w.user("mallory", "m").await;
        let alice_key = alice.keys.public().encryption;
        let (document, grants) = keyhold_e2e::document::encrypt(
            "doc",
            b"signed words",
            alice.device(0),
            &[(user("alice"), alice_key)],
            &mut w.rng,
        )
        .unwrap();
        let bytes = document.to_bytes();
        let grant_bytes: Vec<Vec<u8>> = grants.iter().map(|g| g.to_bytes()).collect();

        // The body and the signature are covered: an altered document is refused when stored,
        // 400 with code 1113.
        for i in [bytes.len() - 1, bytes.len() - 20, 1 + 2 + 3 + 32 + 12 + 5] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let (resp, model) = w.create_document_bytes(&alice, 0, bad, grant_bytes.clone()).await;
            assert_eq!((resp.status, resp.code()), (400, 1113), "byte {i}: {resp:?}");
            assert_eq!(model.unwrap_err(), AccessError::Document(DocumentError::Signature));
        }
        // A version-1 document (no key commitment), correctly signed by the caller, built by
        // hand from the layout of docs/e2e-crypto.md §6: no longer stored, 400 with code 1114.
        let header = 1 + 2 + 3 + 32 + 12;
        let ciphertext = &bytes[header + 32 + 64..];
        let signed = [
            &b"keyhold-e2e-v1 document"[..],
            &bytes[1..header - 12],
            &bytes[header - 12..header],
            &(ciphertext.len() as u64).to_be_bytes(),
            ciphertext,
        ]
        .concat();
        let v1 =
            [&[1u8][..], &bytes[1..header], &alice.device(0).sign(&signed), ciphertext].concat();
        assert!(EncryptedDocument::from_bytes(&v1).unwrap().verify().is_ok());
        let (resp, model) = w.create_document_bytes(&alice, 0, v1, grant_bytes.clone()).await;
        assert_eq!((resp.status, resp.code()), (400, 1114), "{resp:?}");
        assert_eq!(model.unwrap_err(), AccessError::Document(DocumentError::Uncommitted));
        // Bytes that are not a document: 1114; an altered grant: 1113.
        let (resp, _) = w.create_document_bytes(&alice, 0, vec![1, 2, 3], vec![]).await;
        assert_eq!((resp.status, resp.code()), (400, 1114), "{resp:?}");
        let mut bad_grant = grant_bytes[0].clone();
        let last = bad_grant.len() - 1;
        bad_grant[last - 300] ^= 0x01;
        let (resp, _) = w.create_document_bytes(&alice, 0, bytes.clone(), vec![bad_grant]).await;
        assert!(
            [(400, 1113), (400, 1114)].contains(&(resp.status, resp.code())),
            "an altered grant: {resp:?}"
        );
        assert!(w.stored_documents().await.is_empty(), "refused documents are not stored");

        // A document signed by another device than the caller's is refused: 400, 1109.
        let (forged, forged_grants) = keyhold_e2e::document::encrypt(
            "forged",
            b"x",
            mallory.device(0),
            &[(user("alice"), alice_key)],
            &mut w.rng,
        )
        .unwrap();
        let forged_grants: Vec<Vec<u8>> = forged_grants.iter().map(|g| g.to_bytes()).collect();
        let (resp, model) =
            w.create_document_bytes(&alice, 0, forged.to_bytes(), forged_grants).await;
        assert_eq!((resp.status, resp.code()), (400, 1109));
        assert!(matches!(model.unwrap_err(), AccessError::KeyMismatch(_)));
        // Grants signed by another device than the document's: 1109 too.
        let (_, mallorys) = keyhold_e2e::document::encrypt(
            "doc",
            b"y",
            mallory.device(0),
            &[(user("alice"), alice_key)],
            &mut w.rng,
        )
        .unwrap();
        let (resp, _) =
            w.create_document_bytes(&alice, 0, bytes.clone(), vec![mallorys[0].to_bytes()]).await;
        assert_eq!((resp.status, resp.code()), (400, 1109));

        // The genuine one is stored once.
        w.create_document(&alice, 0, document.clone(), grants.clone()).await.unwrap();
        assert_eq!(
            w.create_document(&alice, 0, document.clone(), grants.clone()).await.unwrap_err(),
            AccessError::Exists
        );
        let (_, grant) = w.decrypt(&alice, 0, "doc").await;
        let grant = grant.unwrap();

        // The reader checks too: any altered byte of the document it receives is refused.
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
        // One whose author certificate is not the author's is refused by the reader.
        let mut g = grant.clone();
        g.author = w.certificate(&alice, 0, "mallory", "laptop").await.unwrap();
        assert!(g.open(alice.device(0)).is_err());

        w.assert_events().await;
        // Even the broker's database cannot alter a document unnoticed: the reader refuses it
        // with the signature error (1113).
        let stored = w.stored_documents().await;
        assert_eq!(stored, vec![("doc".to_owned(), bytes.clone())]);
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        sqlx::query(
            "UPDATE e2e_documents SET bytes = $1 WHERE tenant_id = $2 AND document_id = $3",
        )
        .bind(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &tampered))
        .bind(TENANT)
        .bind("doc")
        .execute(&w.db)
        .await
        .unwrap();
        let resp = w.call(&alice, 0, Method::POST, &route("/documents/doc/decrypt"), None).await;
        assert_eq!(resp.status, 200);
        let answer: wire::DecryptResponse = serde_json::from_value(resp.body).unwrap();
        let err = keyhold_e2e::DecryptGrant::try_from(&answer)
            .unwrap()
            .open(alice.device(0))
            .unwrap_err();
        assert_eq!((err.code(), err), (1113, AccessError::Document(DocumentError::Signature)));
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_device_changes_and_decrypts_are_audit_events_in_order() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 6).await;
        let alice = w.user("alice", "a").await;
        let mut bob = w.user("bob", "b").await;
        w.add_device(&mut bob, "phone").await;
        w.group(&alice, "g").await;
        w.add_member(&alice, "g", &bob).await.unwrap();
        w.encrypt(&alice, "d", b"x", &[group("g")]).await;
        let before = w.stored_events().await.len();

        w.read(&bob, 0, "d").await.unwrap();
        w.remove_member(&alice, 0, "g", "bob").await.unwrap();
        assert!(w.read(&bob, 0, "d").await.is_err());
        w.revoke_device(&bob, 0, "phone").await.unwrap();
        let events = w.stored_events().await.split_off(before);
        let actions: Vec<&str> = events.iter().map(|(_, _, a, _)| a.as_str()).collect();
        assert_eq!(
            actions,
            [
                "e2e.document.decrypt",
                "e2e.group.member_remove",
                "e2e.document.decrypt_denied",
                "e2e.device.revoke"
            ],
            "{}",
            db.name
        );
        let (_, actor, _, detail) = &events[0];
        assert_eq!(
            (actor.as_str(), &detail["group"], &detail["document"]),
            ("bob/laptop", &json!("g"), &json!("d"))
        );
        assert_eq!((events[1].1.as_str(), &events[1].3["user"]), ("alice/laptop", &json!("bob")));
        assert_eq!(events[3].3["device"], "phone");

        // Everything before: created by the vendor's backend, then by devices.
        let all = w.stored_events().await;
        let first: Vec<(&str, &str)> = all
            .iter()
            .take(3)
            .map(|(_, actor, action, _)| (actor.as_str(), action.as_str()))
            .collect();
        assert_eq!(
            first,
            [
                ("vendor", "e2e.user.create"),
                ("vendor", "e2e.device.authorize"),
                ("vendor", "e2e.user.create")
            ]
        );
        let actions: Vec<&str> = all.iter().map(|(_, _, a, _)| a.as_str()).collect();
        for action in [
            "e2e.group.create",
            "e2e.group.member_add",
            "e2e.group.key_access",
            "e2e.document.create",
        ] {
            assert!(actions.contains(&action), "{action} missing: {actions:?}");
        }
        // The model recorded exactly these, in this order.
        w.assert_events().await;
        assert_eq!(
            w.expected.iter().map(|e| e.action).rev().take(4).collect::<Vec<_>>(),
            [
                E2eAction::DeviceRevoke,
                E2eAction::DocumentDecryptDenied,
                E2eAction::MemberRemove,
                E2eAction::DocumentDecrypt
            ]
        );
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_change_a_group_and_keys_must_match_their_records() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 7).await;
        let alice = w.user("alice", "a").await;
        let bob = w.user("bob", "b").await;
        let carol = w.user("carol", "c").await;
        w.group(&alice, "g").await;
        w.add_member(&alice, "g", &bob).await.unwrap();
        // Bob is a member, not an admin: 403, code 1106.
        assert_eq!(w.add_member(&bob, "g", &carol).await.unwrap_err(), AccessError::NotAdmin);
        let alices_key = w.group_key_for_admin(&alice, 0, "g").await.unwrap();
        let gk = alices_key.open(alice.device(0).encryption_key()).unwrap();
        let to_carol = pre::transform_key(&gk, &carol.keys.public().encryption, &mut w.rng);
        let path = route("/groups/g/members/carol");
        let body = json!({"transform_key": wire::b64::encode(&to_carol.to_bytes())});
        let resp = w.call(&bob, 0, Method::PUT, &path, Some(&body)).await;
        assert_eq!((resp.status, resp.code()), (403, 1106), "{resp:?}");
        assert_eq!(
            w.put_member(&bob, 0, "g", "carol", to_carol).await.unwrap_err(),
            AccessError::NotAdmin
        );
        assert_eq!(
            w.remove_member(&bob, 0, "g", "alice").await.unwrap_err(),
            AccessError::NotAdmin
        );
        // A transform key to the wrong user, or from a key that is not the group's: 1109.
        let to_bob = pre::transform_key(&gk, &bob.keys.public().encryption, &mut w.rng);
        assert!(matches!(
            w.put_member(&alice, 0, "g", "carol", to_bob).await.unwrap_err(),
            AccessError::KeyMismatch(_)
        ));
        let not_group = pre::transform_key(
            alice.keys.encryption_key(),
            &carol.keys.public().encryption,
            &mut w.rng,
        );
        assert!(matches!(
            w.put_member(&alice, 0, "g", "carol", not_group).await.unwrap_err(),
            AccessError::KeyMismatch(_)
        ));
        // A member twice, or of a group that does not exist.
        let again = pre::transform_key(&gk, &bob.keys.public().encryption, &mut w.rng);
        assert_eq!(
            w.put_member(&alice, 0, "g", "bob", again).await.unwrap_err(),
            AccessError::Exists
        );
        let other = pre::transform_key(&gk, &bob.keys.public().encryption, &mut w.rng);
        assert_eq!(
            w.put_member(&alice, 0, "nope", "bob", other).await.unwrap_err(),
            AccessError::UnknownGroup
        );
        // Bytes that are not a transform key: 400, 1114.
        let resp =
            w.call(&alice, 0, Method::PUT, &path, Some(&json!({"transform_key": "AAAA"}))).await;
        assert_eq!((resp.status, resp.code()), (400, 1114), "{resp:?}");
        // A member leaves by itself.
        w.remove_member(&bob, 0, "g", "bob").await.unwrap();
        assert_eq!(
            w.remove_member(&bob, 0, "g", "bob").await.unwrap_err(),
            AccessError::UnknownUser
        );
        assert_eq!(
            w.remove_member(&alice, 0, "g", "bob").await.unwrap_err(),
            AccessError::UnknownUser
        );

        // Admins: carol made admin opens the group key on her device; the last admin stays.
        let for_carol =
            KeySealedToPublicKey::seal(&gk, &carol.keys.public().encryption, &mut w.rng).unwrap();
        let wrong_group = KeySealedToPublicKey::seal(
            &PrivateKey::generate(&mut w.rng),
            &carol.keys.public().encryption,
            &mut w.rng,
        )
        .unwrap();
        assert!(matches!(
            w.add_admin(&alice, 0, "g", "carol", wrong_group).await.unwrap_err(),
            AccessError::KeyMismatch(_)
        ));
        assert_eq!(
            w.add_admin(&bob, 0, "g", "carol", for_carol.clone()).await.unwrap_err(),
            AccessError::NotAdmin
        );
        w.add_admin(&alice, 0, "g", "carol", for_carol.clone()).await.unwrap();
        assert_eq!(
            w.add_admin(&alice, 0, "g", "carol", for_carol).await.unwrap_err(),
            AccessError::Exists
        );
        let carols = w.group_key_for_admin(&carol, 0, "g").await.unwrap();
        assert_eq!(
            carols.open(carol.device(0).encryption_key()).unwrap().public_key(),
            gk.public_key()
        );
        let view = w.get_group(&bob, 0, "g").await.unwrap();
        assert_eq!(
            (view.admins, view.members),
            (vec!["alice".into(), "carol".into()], vec!["alice".to_owned()])
        );
        w.remove_admin(&carol, 0, "g", "alice").await.unwrap();
        assert_eq!(
            w.remove_admin(&carol, 0, "g", "bob").await.unwrap_err(),
            AccessError::UnknownUser
        );
        let last = w.call(&carol, 0, Method::DELETE, &route("/groups/g/admins/carol"), None).await;
        assert_eq!((last.status, last.code()), (409, 1111), "{last:?}");
        assert_eq!(
            w.remove_admin(&carol, 0, "g", "carol").await.unwrap_err(),
            AccessError::LastAdmin
        );
        assert_eq!(w.group_key_for_admin(&alice, 0, "g").await.unwrap_err(), AccessError::NotAdmin);

        // A device certificate not signed by the user is refused: 400, 1110.
        let device = DeviceKeys::generate(&mut w.rng);
        let cert = DeviceCertificate::issue(&carol.keys, "bob", "stolen", device.public());
        let tk =
            pre::transform_key(bob.keys.encryption_key(), &device.public().encryption, &mut w.rng);
        assert_eq!(w.authorize("bob", cert, tk).await.unwrap_err(), AccessError::Certificate);
        // A transform key that is not the user's, or not to the device: 1109; a device twice:
        // 1105; a bad device id: 1112.
        let cert = DeviceCertificate::issue(&bob.keys, "bob", "phone", device.public());
        let not_bobs = pre::transform_key(
            carol.keys.encryption_key(),
            &device.public().encryption,
            &mut w.rng,
        );
        assert!(matches!(
            w.authorize("bob", cert.clone(), not_bobs).await.unwrap_err(),
            AccessError::KeyMismatch(_)
        ));
        let elsewhere = pre::transform_key(
            bob.keys.encryption_key(),
            &carol.keys.public().encryption,
            &mut w.rng,
        );
        assert!(matches!(
            w.authorize("bob", cert, elsewhere).await.unwrap_err(),
            AccessError::KeyMismatch(_)
        ));
        let relaptop = DeviceCertificate::issue(&bob.keys, "bob", "laptop", device.public());
        let tk =
            pre::transform_key(bob.keys.encryption_key(), &device.public().encryption, &mut w.rng);
        assert_eq!(
            w.authorize("bob", relaptop, tk.clone()).await.unwrap_err(),
            AccessError::Exists
        );
        let bad_id = DeviceCertificate::issue(&bob.keys, "bob", "tab\u{7}let", device.public());
        assert_eq!(w.authorize("bob", bad_id, tk.clone()).await.unwrap_err(), AccessError::Id);
        // A certificate for another user than the route's: 1109 (the broker's own check).
        let for_bob = DeviceCertificate::issue(&bob.keys, "bob", "desk", device.public());
        let body = serde_json::to_value(AuthorizeDevice {
            certificate: CertificateView::from(&for_bob),
            transform_key: tk.to_bytes(),
        })
        .unwrap();
        let resp = w.vendor(Method::POST, &route("/users/carol/devices"), Some(body)).await;
        assert_eq!((resp.status, resp.code()), (400, 1109), "{resp:?}");

        // Unknown things and bad ids.
        assert_eq!(w.read(&alice, 0, "nothing").await.unwrap_err(), AccessError::UnknownDocument);
        assert_eq!(w.get_group(&alice, 0, "nope").await.unwrap_err(), AccessError::UnknownGroup);
        assert_eq!(w.user_keys(&alice, 0, "nobody").await.unwrap_err(), AccessError::UnknownUser);
        assert_eq!(w.sealed_user_keys("nobody").await.unwrap_err(), AccessError::UnknownUser);
        let keys = UserKeys::generate(&mut w.rng);
        let sealed = PassphraseSealedKey::seal(&keys, b"p", CHEAP, &mut w.rng).unwrap();
        for bad_id in ["", &"x".repeat(257), "new\nline"] {
            let signed = user_statement(&keys, bad_id);
            assert_eq!(
                w.create_user(bad_id, sealed.clone(), signed).await.unwrap_err(),
                AccessError::Id
            );
        }
        let as_alice = user_statement(&keys, "alice");
        assert_eq!(
            w.create_user("alice", sealed.clone(), as_alice).await.unwrap_err(),
            AccessError::Exists
        );
        let gk2 = PrivateKey::generate(&mut w.rng);
        let sealed2 =
            KeySealedToPublicKey::seal(&gk2, &alice.keys.public().encryption, &mut w.rng).unwrap();
        assert_eq!(
            w.create_group(&alice, 0, "g", gk2.public_key(), sealed2.clone(), None)
                .await
                .unwrap_err(),
            AccessError::Exists
        );
        assert!(matches!(
            w.create_group(&alice, 0, "h", gk.public_key(), sealed2.clone(), None)
                .await
                .unwrap_err(),
            AccessError::KeyMismatch(_)
        ));
        assert_eq!(
            w.create_group(&alice, 0, "", gk2.public_key(), sealed2.clone(), None)
                .await
                .unwrap_err(),
            AccessError::Id
        );
        // A group without its creator as a member.
        w.create_group(&alice, 0, "h", gk2.public_key(), sealed2, None).await.unwrap();
        assert!(w.get_group(&alice, 0, "h").await.unwrap().members.is_empty());
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_any_printable_character_travel_percent_encoded_and_signed_as_sent() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 13).await;
        // Non-ASCII in the headers too (UTF-8 bytes), `/`, `?`, `#`, `%` in the paths.
        let zoe = w.user("zoë o'brien/ops", "z").await;
        let bob = w.user("bob?x=1#y", "b").await;
        let (team, doc) = ("r&d team/α", "q3 report: 50% done?");
        w.group(&zoe, team).await;
        w.add_member(&zoe, team, &bob).await.unwrap();
        w.encrypt(&zoe, doc, b"numbers", &[group(team)]).await;
        assert_eq!(w.read(&bob, 0, doc).await.unwrap(), b"numbers", "{}", db.name);
        w.get_group(&bob, 0, team).await.unwrap();
        w.certificate(&bob, 0, "zoë o'brien/ops", "laptop").await.unwrap();
        w.revoke(&zoe, 0, doc, &group(team)).await.unwrap();
        assert_eq!(w.read(&bob, 0, doc).await.unwrap_err(), AccessError::NoAccess);
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_a_fresh_signature_of_an_authorized_device() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 8).await;
        let alice = w.user("alice", "a").await;
        let bob = w.user("bob", "b").await;
        let keys = alice.device(0);
        let path = route("/users/bob");
        let now = unix_now();
        let ok = w.signed_at(keys, "alice", "laptop", Method::GET, &path, None, now).await;
        assert_eq!(ok.status, 200, "{ok:?}");

        let expect = |what: &str, resp: &Resp, status: u16, code: u64| {
            assert_eq!((resp.status, resp.code()), (status, code), "{}: {what}: {resp:?}", db.name);
        };
        // No headers at all, or some missing, or unreadable: 1120.
        let resp = w.raw(Method::GET, &path, &[], vec![]).await;
        expect("no headers", &resp, 401, 1120);
        let h = wire::sign_request(keys, TENANT, "alice", "laptop", "GET", &path, now, b"");
        let full = vec![
            (wire::USER_HEADER, h.user.clone()),
            (wire::DEVICE_HEADER, h.device.clone()),
            (wire::TIMESTAMP_HEADER, h.timestamp.to_string()),
            (wire::SIGNATURE_HEADER, h.signature.clone()),
        ];
        assert_eq!(w.raw(Method::GET, &path, &full, vec![]).await.status, 200);
        for missing in 0..4 {
            let mut headers = full.clone();
            headers.remove(missing);
            expect(
                "a header missing",
                &w.raw(Method::GET, &path, &headers, vec![]).await,
                401,
                1120,
            );
        }
        let mut garbled = full.clone();
        garbled[2].1 = "soon".into();
        expect("timestamp", &w.raw(Method::GET, &path, &garbled, vec![]).await, 401, 1120);
        let mut garbled = full.clone();
        garbled[3].1 = "!!".into();
        expect("signature", &w.raw(Method::GET, &path, &garbled, vec![]).await, 401, 1120);

        // Stale, or from the future: 1121.
        for skew in [-wire::MAX_CLOCK_SKEW_SECS - 5, wire::MAX_CLOCK_SKEW_SECS + 5] {
            let resp =
                w.signed_at(keys, "alice", "laptop", Method::GET, &path, None, now + skew).await;
            expect("stale", &resp, 401, 1121);
        }

        // Another path, query, method, body, tenant or device than signed: 1122.
        let signed_for = |p: &str, m: &str, body: &[u8], tenant: &str, device: &str| {
            let h = wire::sign_request(keys, tenant, "alice", device, m, p, now, body);
            vec![
                (wire::USER_HEADER, h.user),
                (wire::DEVICE_HEADER, "laptop".to_owned()),
                (wire::TIMESTAMP_HEADER, h.timestamp.to_string()),
                (wire::SIGNATURE_HEADER, h.signature),
            ]
        };
        let with_query = format!("{path}?view=1");
        let headers = signed_for(&with_query, "GET", b"", TENANT, "laptop");
        assert_eq!(w.raw(Method::GET, &with_query, &headers, vec![]).await.status, 200);
        let resp = w.raw(Method::GET, &format!("{path}?view=2"), &headers, vec![]).await;
        expect("another query", &resp, 401, 1122);
        let headers = signed_for(&route("/users/alice"), "GET", b"", TENANT, "laptop");
        expect("another path", &w.raw(Method::GET, &path, &headers, vec![]).await, 401, 1122);
        let groups = route("/groups");
        let headers = signed_for(&groups, "PUT", b"{}", TENANT, "laptop");
        expect(
            "another method",
            &w.raw(Method::POST, &groups, &headers, b"{}".to_vec()).await,
            401,
            1122,
        );
        let headers = signed_for(&groups, "POST", b"{}", TENANT, "laptop");
        expect(
            "another body",
            &w.raw(Method::POST, &groups, &headers, b"{ }".to_vec()).await,
            401,
            1122,
        );
        let headers = signed_for(&path, "GET", b"", "other-tenant", "laptop");
        expect("another tenant", &w.raw(Method::GET, &path, &headers, vec![]).await, 401, 1122);
        let headers = signed_for(&path, "GET", b"", TENANT, "phone");
        expect("another device", &w.raw(Method::GET, &path, &headers, vec![]).await, 401, 1122);
        // Signed by another device's key (bob's) in alice's name.
        let resp =
            w.signed_at(bob.device(0), "alice", "laptop", Method::GET, &path, None, now).await;
        expect("another key", &resp, 401, 1122);

        // A device or user the tenant does not have: 1102 (before the body is read).
        let resp = w.signed_at(keys, "alice", "phone", Method::GET, &path, None, now).await;
        expect("unknown device", &resp, 401, 1102);
        let resp = w.signed_at(keys, "zed", "laptop", Method::GET, &path, None, now).await;
        expect("unknown user", &resp, 401, 1102);
        assert!(resp.body["message"].as_str().unwrap().contains("device"));

        // Another tenant's path: the device is not that tenant's. An unknown tenant, and a
        // disabled one: 404, 1130.
        assert_eq!(
            b.post("/api/v1/tenants", json!({"id": "beta", "vendor_key": false})).await.0,
            201
        );
        let beta = "/api/v1/e2e/tenants/beta/users/bob".to_owned();
        let h = wire::sign_request(keys, "beta", "alice", "laptop", "GET", &beta, now, b"");
        let beta_headers = vec![
            (wire::USER_HEADER, h.user),
            (wire::DEVICE_HEADER, h.device),
            (wire::TIMESTAMP_HEADER, h.timestamp.to_string()),
            (wire::SIGNATURE_HEADER, h.signature),
        ];
        expect(
            "another tenant's device",
            &w.raw(Method::GET, &beta, &beta_headers, vec![]).await,
            401,
            1102,
        );
        let nowhere = "/api/v1/e2e/tenants/nowhere/users/bob";
        expect("unknown tenant", &w.raw(Method::GET, nowhere, &full, vec![]).await, 404, 1130);
        assert_eq!(b.post("/api/v1/tenants/acme/disable", json!({})).await.0, 200);
        let resp = w.signed_at(keys, "alice", "laptop", Method::GET, &path, None, unix_now()).await;
        expect("disabled tenant", &resp, 404, 1130);
        assert_eq!(b.post("/api/v1/tenants/acme/enable", json!({})).await.0, 200);
        let resp = w.signed_at(keys, "alice", "laptop", Method::GET, &path, None, unix_now()).await;
        assert_eq!(resp.status, 200);

        // Refused requests recorded nothing.
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_routes_need_the_vendor_key_and_an_active_tenant() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 9).await;
        let alice = w.user("alice", "a").await;
        let bob_keys = UserKeys::generate(&mut w.rng);
        let sealed = PassphraseSealedKey::seal(&bob_keys, b"p", CHEAP, &mut w.rng).unwrap();
        let bob_signed = user_statement(&bob_keys, "bob");
        let key_signature = wire::b64::encode(&bob_signed);
        let body = json!({
            "user": "bob",
            "sealed_keys": wire::b64::encode(&sealed.to_bytes()),
            "key_signature": key_signature,
        });
        let users = route("/users");
        let send = |auth: Option<String>, path: String, body: Value| {
            let mut r = b.http.post(b.url(&path)).json(&body);
            if let Some(auth) = auth {
                r = r.header("authorization", auth);
            }
            async move {
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                let www =
                    r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
                (status, r.json::<Value>().await.unwrap(), www)
            }
        };
        for auth in
            [None, Some(format!("Bearer {PROXY_TOKEN}")), Some("Bearer nope-nope-nope-nope".into())]
        {
            let (status, body, www) = send(auth, users.clone(), body.clone()).await;
            assert_eq!((status, body["code"].as_u64()), (401, Some(1133)), "{body}");
            assert_eq!(www.as_deref(), Some("Bearer"));
        }
        // A device's signature is not the vendor's key.
        let resp = w.call(&alice, 0, Method::POST, &users, Some(&body)).await;
        assert_eq!((resp.status, resp.code()), (401, 1133));
        let vendor = Some(format!("Bearer {}", common::VENDOR_KEY));
        let (status, body_out, _) =
            send(vendor.clone(), "/api/v1/e2e/tenants/nowhere/users".into(), body.clone()).await;
        assert_eq!((status, body_out["code"].as_u64()), (404, Some(1130)));
        // Malformed requests: 1131 (JSON), 1114 (bytes that are not sealed keys).
        let (status, out, _) = send(vendor.clone(), users.clone(), json!({"user": "bob"})).await;
        assert_eq!((status, out["code"].as_u64()), (400, Some(1131)), "{out}");
        let with = |sealed_keys: &str, key_signature: &str| {
            let mut body = body.clone();
            body["sealed_keys"] = json!(sealed_keys);
            body["key_signature"] = json!(key_signature);
            body
        };
        let (status, out, _) =
            send(vendor.clone(), users.clone(), with("%%", &key_signature)).await;
        assert_eq!((status, out["code"].as_u64()), (400, Some(1131)), "{out}");
        let (status, out, _) =
            send(vendor.clone(), users.clone(), with("AAAA", &key_signature)).await;
        assert_eq!((status, out["code"].as_u64()), (400, Some(1114)), "{out}");
        // Larger than the broker's body limit: 413, 1132.
        let big = json!({"user": "bob", "sealed_keys": "A".repeat(TEST_MAX_BODY_BYTES)});
        let (status, out, _) = send(vendor.clone(), users.clone(), big).await;
        assert_eq!((status, out["code"].as_u64()), (413, Some(1132)), "{out}");
        // A disabled tenant: 404 for the vendor too.
        assert_eq!(b.post("/api/v1/tenants/acme/disable", json!({})).await.0, 200);
        let (status, out, _) = send(vendor.clone(), users.clone(), body.clone()).await;
        assert_eq!((status, out["code"].as_u64()), (404, Some(1130)), "{out}");
        let resp = w.vendor(Method::GET, &route("/users/alice/sealed-keys"), None).await;
        assert_eq!((resp.status, resp.code()), (404, 1130));
        assert_eq!(b.post("/api/v1/tenants/acme/enable", json!({})).await.0, 200);
        let (status, _, _) = send(vendor, users, body).await;
        assert_eq!(status, 201);
        w.model.create_user("bob", sealed, bob_signed).unwrap();
        w.expected.extend(w.model.take_events());
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_may_exceed_the_broker_body_limit_up_to_64_mib() {
    let mut first = true;
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 10).await;
        let alice = w.user("alice", "a").await;
        let bob = w.user("bob", "b").await;
        // 1 MiB: sixteen times the test broker's body limit, accepted on this route.
        let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        w.encrypt(&alice, "big", &body, &[user("alice"), user("bob")]).await;
        assert_eq!(w.read(&bob, 0, "big").await.unwrap(), body);
        assert_eq!(w.stored_documents().await, w.model_documents());
        // Other device routes keep the broker's limit: 413, 1132.
        let grant = json!({"grant": "A".repeat(TEST_MAX_BODY_BYTES)});
        let resp =
            w.call(&alice, 0, Method::POST, &route("/documents/big/grants"), Some(&grant)).await;
        assert_eq!((resp.status, resp.code()), (413, 1132), "{resp:?}");
        // More than 64 MiB of document: 413, 1132, before anything is parsed. (Refused before
        // the database is touched, so once, on the first database: hashing and parsing 85 MiB
        // takes a while in a debug build.)
        if first {
            let too_big = vec![0u8; keyhold_broker::e2e::MAX_DOCUMENT_BYTES + 1];
            let request = json!({"document": wire::b64::encode(&too_big), "grants": []});
            let resp = w.call(&alice, 0, Method::POST, &route("/documents"), Some(&request)).await;
            assert_eq!((resp.status, resp.code()), (413, 1132), "{resp:?}");
            first = false;
        }
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admin_removals_keep_one_admin() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 11).await;
        let alice = w.user("alice", "a").await;
        let carol = w.user("carol", "c").await;
        w.group(&alice, "g").await;
        let gk = w
            .group_key_for_admin(&alice, 0, "g")
            .await
            .unwrap()
            .open(alice.device(0).encryption_key())
            .unwrap();
        let mut survivor = &alice;
        for round in 0..5 {
            // Two admins, each removing the other at the same time: one of them stays.
            let other = if survivor.id == alice.id { &carol } else { &alice };
            let sealed =
                KeySealedToPublicKey::seal(&gk, &other.keys.public().encryption, &mut w.rng)
                    .unwrap();
            let body = json!({"sealed_group_key": wire::b64::encode(&sealed.to_bytes())});
            let path = route(&format!("/groups/g/admins/{}", other.id));
            let resp = w.call(survivor, 0, Method::PUT, &path, Some(&body)).await;
            assert_eq!(resp.status, 204, "{resp:?}");
            let (remove_carol, remove_alice) =
                (route("/groups/g/admins/carol"), route("/groups/g/admins/alice"));
            let (a, c) = tokio::join!(
                w.call(&alice, 0, Method::DELETE, &remove_carol, None),
                w.call(&carol, 0, Method::DELETE, &remove_alice, None),
            );
            let mut statuses = [a.status, c.status];
            statuses.sort_unstable();
            // The second, serialised after the first, is no admin any more: 403, 1106. (Run
            // side by side, both would have seen two admins and left none.)
            assert_eq!(statuses, [204, 403], "{}: round {round}: {a:?} {c:?}", db.name);
            let refused = if a.status == 403 { &a } else { &c };
            assert_eq!(refused.code(), 1106);
            let view: Value = w.call(&alice, 0, Method::GET, &route("/groups/g"), None).await.body;
            let admins = view["admins"].as_array().unwrap();
            assert_eq!(admins.len(), 1, "{view}");
            survivor = if admins[0] == "alice" { &alice } else { &carol };
        }
        let removals = w
            .stored_events()
            .await
            .iter()
            .filter(|(_, _, action, _)| action == "e2e.group.admin_remove")
            .count();
        assert_eq!(removals, 5);
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_events_are_claimed_with_their_own_lease_and_cursor() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 12).await;
        let _alice = w.user("alice", "a").await;
        let proxy = |path: &'static str, body: Value| {
            let r = b.http.post(b.url(path)).bearer_auth(PROXY_TOKEN).json(&body);
            async move {
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let claim = "/api/proxy/v1/e2e-events/claim";
        let ack = "/api/proxy/v1/e2e-events/ack";
        let (status, batch) = proxy(claim, json!({"proxy": "proxy-a"})).await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(batch["cursor"], 0);
        let events = batch["events"].as_array().unwrap();
        let summary: Vec<(i64, &str, &str, &str)> = events
            .iter()
            .map(|e| {
                (
                    e["id"].as_i64().unwrap(),
                    e["tenant"].as_str().unwrap(),
                    e["actor"].as_str().unwrap(),
                    e["action"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, TENANT, "vendor", "e2e.user.create"),
                (2, TENANT, "vendor", "e2e.device.authorize")
            ],
            "{}",
            db.name
        );
        assert_eq!(events[1]["detail"]["device"], "laptop");
        // The admin events have their own lease: another proxy takes it meanwhile.
        let (status, admin) =
            proxy("/api/proxy/v1/admin-events/claim", json!({"proxy": "proxy-b"})).await;
        assert_eq!(status, 200);
        assert_eq!(admin["changes"][0]["action"], "tenant.create");
        // ... but not the E2E lease, nor its cursor.
        assert_eq!(proxy(claim, json!({"proxy": "proxy-b"})).await.0, 204);
        assert_eq!(proxy(ack, json!({"proxy": "proxy-b", "up_to": 2})).await.0, 409);
        assert_eq!(proxy(ack, json!({"proxy": "proxy-a", "up_to": 2})).await.0, 204);
        let (_, after) = proxy(claim, json!({"proxy": "proxy-a"})).await;
        assert_eq!(
            (after["cursor"].as_i64(), after["events"].as_array().unwrap().len()),
            (Some(2), 0)
        );
        // The admin-events cursor did not move.
        let (_, admin) =
            proxy("/api/proxy/v1/admin-events/claim", json!({"proxy": "proxy-b"})).await;
        assert_eq!(admin["cursor"], 0);
        // The proxy token is needed.
        let r = b.http.post(b.url(claim)).json(&json!({"proxy": "x"})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        // Through the store as well.
        let batch = b.store.claim_e2e_events("proxy-a").await.unwrap().unwrap();
        assert_eq!((batch.cursor, batch.events.len()), (2, 0));
        b.stop().await;
    }
}

/// Standard base64, as the E2E tables hold binary values.
fn std_b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// `body` with a key statement of the wrong length (400, 1114) or none at all (400, 1131),
/// sent by the vendor (`by` `None`) or by device 0 of `by`: refused as any malformed field,
/// before the rules, and nothing recorded.
async fn malformed_statements_are_refused(
    w: &World<'_>,
    by: Option<&Person>,
    path: &str,
    body: &Value,
) {
    for (what, signature, code) in [
        ("63 bytes", Some(wire::b64::encode(&[7u8; 63])), 1114),
        ("65 bytes", Some(wire::b64::encode(&[7u8; 65])), 1114),
        ("empty", Some(String::new()), 1114),
        ("not base64url", Some("%%".to_owned()), 1131),
        ("missing", None, 1131),
    ] {
        let mut body = body.clone();
        match signature {
            Some(s) => body["key_signature"] = json!(s),
            None => drop(body.as_object_mut().unwrap().remove("key_signature")),
        }
        let resp = match by {
            None => w.vendor(Method::POST, path, Some(body)).await,
            Some(p) => w.call(p, 0, Method::POST, path, Some(&body)).await,
        };
        assert_eq!((resp.status, resp.code()), (400, code), "{what}: {resp:?}");
    }
    w.assert_events().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_not_signed_by_their_owners_are_refused_and_nothing_is_stored() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 14).await;
        let alice = w.user("alice", "a").await;
        let mut bob = w.user("bob", "b").await;
        w.add_device(&mut bob, "phone").await;

        // A user's keys signed with another user's key, for another user id, for another
        // tenant, not at all, or altered: 400, 1115 (the model's `KeyStatement`), nothing
        // stored, no event (World::create_user checks both against the model and the table).
        let carol = UserKeys::generate(&mut w.rng);
        let sealed = PassphraseSealedKey::seal(&carol, b"c", CHEAP, &mut w.rng).unwrap();
        let good = user_statement(&carol, "carol");
        let mut flipped = good;
        flipped[40] ^= 0x01;
        for (what, bad) in [
            ("alice's key", *SignedUserKeys::issue(&alice.keys, TENANT, "carol").signature()),
            ("another user id", user_statement(&carol, "carol2")),
            ("another tenant", *SignedUserKeys::issue(&carol, "beta", "carol").signature()),
            ("zeros", [0; 64]),
            ("a bit flipped", flipped),
        ] {
            let refused = w.create_user("carol", sealed.clone(), bad).await.unwrap_err();
            assert_eq!(refused, AccessError::KeyStatement, "{}: {what}", db.name);
            assert_eq!(w.stored_user("carol").await, None, "{what}");
        }
        // As the vendor sees it.
        let body = json!({
            "user": "carol",
            "sealed_keys": wire::b64::encode(&sealed.to_bytes()),
            "key_signature": wire::b64::encode(&user_statement(&carol, "carol2")),
        });
        let resp = w.vendor(Method::POST, &route("/users"), Some(body.clone())).await;
        assert_eq!((resp.status, resp.code()), (400, 1115), "{resp:?}");
        assert!(resp.body["message"].as_str().unwrap().contains("signed"), "{resp:?}");
        malformed_statements_are_refused(&w, None, &route("/users"), &body).await;
        // The model's order: the id, then an existing user, then the statement (alice keeps
        // her keys and her signature).
        let alice_stored = w.stored_user("alice").await.unwrap();
        assert_eq!(alice_stored.1, std_b64(&user_statement(&alice.keys, "alice")));
        assert_eq!(w.create_user("", sealed.clone(), [0; 64]).await.unwrap_err(), AccessError::Id);
        assert_eq!(
            w.create_user("alice", sealed.clone(), [0; 64]).await.unwrap_err(),
            AccessError::Exists
        );
        assert_eq!(w.stored_user("alice").await, Some(alice_stored));
        assert_eq!(w.stored_user("carol").await, None);
        // Signed by carol for carol of this tenant: stored with its signature, served signed.
        w.create_user("carol", sealed, good).await.unwrap();
        assert_eq!(w.stored_user("carol").await.unwrap().1, std_b64(&good));
        let served = w.signed_user_keys(&alice, 0, "carol").await.unwrap();
        assert_eq!((served.keys, *served.signature()), (carol.public(), good));

        // A group's key signed by another device than the caller (the same user's other
        // device, another user's), for another group, another key or another tenant, or
        // naming another creator: 400, 1115, nothing stored.
        let gk = PrivateKey::generate(&mut w.rng);
        let pk = gk.public_key();
        let sealed_g =
            KeySealedToPublicKey::seal(&gk, &bob.keys.public().encryption, &mut w.rng).unwrap();
        let other_pk = PrivateKey::generate(&mut w.rng).public_key();
        let by_bob = |device: usize, tenant: &str, group: &str, key, creator_device: &str| {
            *SignedGroupKey::issue(bob.device(device), tenant, group, key, "bob", creator_device)
                .signature()
        };
        let by_alice_as_bob =
            *SignedGroupKey::issue(alice.device(0), TENANT, "g", pk, "bob", "laptop").signature();
        for (what, bad) in [
            ("bob's phone, naming the laptop", by_bob(1, TENANT, "g", pk, "laptop")),
            ("bob's phone, naming itself", group_statement(&bob, 1, "g", pk)),
            ("alice's device, naming bob's laptop", by_alice_as_bob),
            ("alice's device, naming itself", group_statement(&alice, 0, "g", pk)),
            ("another group id", group_statement(&bob, 0, "g2", pk)),
            ("another key", group_statement(&bob, 0, "g", other_pk)),
            ("another tenant", by_bob(0, "beta", "g", pk, "laptop")),
            ("another creator device", by_bob(0, TENANT, "g", pk, "phone")),
            ("zeros", [0; 64]),
        ] {
            let refused = w
                .create_group_signed(&bob, 0, "g", pk, sealed_g.clone(), None, bad)
                .await
                .unwrap_err();
            assert_eq!(refused, AccessError::KeyStatement, "{}: {what}", db.name);
            assert_eq!(w.stored_group_key("g").await, None, "{what}");
        }
        // The laptop's statement sent by the phone: the phone did not sign it.
        let laptops = group_statement(&bob, 0, "g", pk);
        assert_eq!(
            w.create_group_signed(&bob, 1, "g", pk, sealed_g.clone(), None, laptops)
                .await
                .unwrap_err(),
            AccessError::KeyStatement
        );
        let body = json!({
            "group": "g",
            "public_key": wire::b64::encode(&pk.to_bytes()),
            "sealed_for_creator": wire::b64::encode(&sealed_g.to_bytes()),
            "key_signature": wire::b64::encode(&group_statement(&bob, 1, "g", pk)),
        });
        let resp = w.call(&bob, 0, Method::POST, &route("/groups"), Some(&body)).await;
        assert_eq!((resp.status, resp.code()), (400, 1115), "{resp:?}");
        malformed_statements_are_refused(&w, Some(&bob), &route("/groups"), &body).await;
        // The model's order: the id, an existing group, the statement, then the sealed key
        // (here the statement is for `pk` and the request says `other_pk`: 1115, not 1109).
        w.group(&alice, "team").await;
        let team_before = w.stored_group_key("team").await;
        assert_eq!(
            w.create_group_signed(&bob, 0, "", pk, sealed_g.clone(), None, [0; 64])
                .await
                .unwrap_err(),
            AccessError::Id
        );
        assert_eq!(
            w.create_group_signed(&bob, 0, "team", pk, sealed_g.clone(), None, [0; 64])
                .await
                .unwrap_err(),
            AccessError::Exists
        );
        assert_eq!(w.stored_group_key("team").await, team_before);
        assert_eq!(
            w.create_group_signed(&bob, 0, "g", other_pk, sealed_g.clone(), None, laptops)
                .await
                .unwrap_err(),
            AccessError::KeyStatement
        );
        let for_other = group_statement(&bob, 0, "g", other_pk);
        assert!(matches!(
            w.create_group_signed(&bob, 0, "g", other_pk, sealed_g.clone(), None, for_other)
                .await
                .unwrap_err(),
            AccessError::KeyMismatch(_)
        ));
        assert_eq!(w.stored_group_key("g").await, None);

        // Signed by the calling device: stored with its creator, served with the creator's
        // certificate, and it verifies for a reader (World::get_group checks).
        let membership = pre::transform_key(&gk, &bob.keys.public().encryption, &mut w.rng);
        w.create_group(&bob, 0, "g", pk, sealed_g, Some(membership)).await.unwrap();
        let (_, creator_user, creator_device, signature) = w.stored_group_key("g").await.unwrap();
        assert_eq!(
            (creator_user.as_str(), creator_device.as_str(), signature),
            ("bob", "laptop", std_b64(&laptops))
        );
        let view = w.get_group(&alice, 0, "g").await.unwrap();
        assert_eq!(
            serde_json::to_value(&view.creator).unwrap(),
            json!(CertificateView::from(w.model.device_certificate("bob", "laptop").unwrap()))
        );
        assert_eq!(view.key_signature, laptops);
        w.assert_events().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_verify_served_keys_even_once_the_creating_device_is_revoked() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 15).await;
        let alice = w.user("alice", "a").await;
        let mut bob = w.user("bob", "b").await;
        w.add_device(&mut bob, "phone").await;
        // Bob's laptop creates the group, adds alice and writes to it.
        w.group(&bob, "team").await;
        w.add_member(&bob, "team", &alice).await.unwrap();
        w.encrypt(&bob, "memo", b"from the laptop", &[group("team")]).await;

        // What a device checks, before and after bob's phone revokes the laptop: bob's keys
        // (signed by bob), the group's key (signed by the laptop, through its certificate and
        // bob's signing key), the author of a document (its user's keys signed).
        for revoked in [false, true] {
            if revoked {
                w.revoke_device(&bob, 1, "laptop").await.unwrap();
            }
            let bobs = w.signed_user_keys(&alice, 0, "bob").await.unwrap();
            assert_eq!(bobs.verify(TENANT), Ok(()));
            assert_eq!(bobs.verify("beta"), Err(AccessError::KeyStatement));
            let view = w.get_group(&alice, 0, "team").await.unwrap();
            let (signed, creator) = view.signed_key().unwrap();
            assert_eq!((creator.user.as_str(), creator.device.as_str()), ("bob", "laptop"));
            assert_eq!(creator.keys, bob.device(0).public());
            assert_eq!(signed.verify(TENANT, &creator, &bobs.keys.signing), Ok(()));
            // Not with another user's signing key, nor for another tenant.
            let alices = w.signed_user_keys(&alice, 0, "alice").await.unwrap();
            assert_eq!(
                signed.verify(TENANT, &creator, &alices.keys.signing),
                Err(AccessError::KeyStatement)
            );
            assert_eq!(
                signed.verify("beta", &creator, &bobs.keys.signing),
                Err(AccessError::KeyStatement)
            );
            w.get_group(&bob, 1, "team").await.unwrap();
            let (_, grant) = w.decrypt(&alice, 0, "memo").await;
            let grant = grant.unwrap();
            assert_eq!(grant.author_revoked, revoked);
            assert_eq!(grant.author_user, bobs);
            assert_eq!(grant.author_user.verify(TENANT), Ok(()));
            let (plain, author) = grant.open(alice.device(0)).unwrap();
            assert_eq!((&plain[..], author), (&b"from the laptop"[..], "bob"));
        }
        w.assert_events().await;

        // A broker (or its database) that swaps a key is caught by the devices: bob's
        // encryption key, the group's key, the group's creator.
        let other = PrivateKey::generate(&mut w.rng).public_key();
        let swap = |sql: &'static str, value: String| {
            let db = w.db.clone();
            async move { sqlx::query(sql).bind(value).bind(TENANT).execute(&db).await.unwrap() }
        };
        swap(
            "UPDATE e2e_users SET encryption_key = $1 WHERE tenant_id = $2 AND user_id = 'bob'",
            std_b64(&other.to_bytes()),
        )
        .await;
        let resp = w.call(&alice, 0, Method::GET, &route("/users/bob"), None).await;
        let view: wire::UserKeysView = serde_json::from_value(resp.body).unwrap();
        assert_eq!(view.signed("bob").unwrap().verify(TENANT), Err(AccessError::KeyStatement));
        let resp = w.call(&alice, 0, Method::POST, &route("/documents/memo/decrypt"), None).await;
        let answer: wire::DecryptResponse = serde_json::from_value(resp.body).unwrap();
        let grant = keyhold_e2e::DecryptGrant::try_from(&answer).unwrap();
        assert_eq!(grant.author_user.verify(TENANT), Err(AccessError::KeyStatement));

        let get_team = async || {
            let resp = w.call(&alice, 0, Method::GET, &route("/groups/team"), None).await;
            assert_eq!(resp.status, 200, "{resp:?}");
            serde_json::from_value::<wire::GroupView>(resp.body).unwrap()
        };
        let bobs_signing = bob.keys.public().signing;
        let genuine = get_team().await;
        swap(
            "UPDATE e2e_groups SET public_key = $1 WHERE tenant_id = $2 AND group_id = 'team'",
            std_b64(&other.to_bytes()),
        )
        .await;
        let (signed, creator) = get_team().await.signed_key().unwrap();
        assert_eq!(signed.public_key, other);
        assert_eq!(signed.verify(TENANT, &creator, &bobs_signing), Err(AccessError::KeyStatement));
        swap(
            "UPDATE e2e_groups SET public_key = $1, creator_device = 'phone' \
             WHERE tenant_id = $2 AND group_id = 'team'",
            std_b64(&genuine.public_key),
        )
        .await;
        let (signed, creator) = get_team().await.signed_key().unwrap();
        assert_eq!(creator.keys, bob.device(1).public());
        assert_eq!(signed.verify(TENANT, &creator, &bobs_signing), Err(AccessError::KeyStatement));
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_groups_stored_before_keys_were_signed_are_served_unsigned() {
    for db in databases().await {
        let b = TestBroker::start(&db).await;
        let mut w = World::new(&b, &db, 16).await;
        let alice = w.user("alice", "a").await;
        w.encrypt(&alice, "note", b"old note", &[user("alice")]).await;
        // Rows as the broker wrote them before migration 0008 (its columns take their
        // defaults), and a signature lost since.
        let keys = UserKeys::generate(&mut w.rng);
        let sealed = PassphraseSealedKey::seal(&keys, b"o", CHEAP, &mut w.rng).unwrap();
        let public = keys.public();
        sqlx::query(
            "INSERT INTO e2e_users (tenant_id, user_id, encryption_key, signing_key, sealed_keys, \
             created_at) VALUES ($1, 'old', $2, $3, $4, '2025-01-01T00:00:00Z')",
        )
        .bind(TENANT)
        .bind(std_b64(&public.encryption.to_bytes()))
        .bind(std_b64(public.signing.as_bytes()))
        .bind(std_b64(&sealed.to_bytes()))
        .execute(&w.db)
        .await
        .unwrap();
        let gk = PrivateKey::generate(&mut w.rng).public_key();
        sqlx::query(
            "INSERT INTO e2e_groups (tenant_id, group_id, public_key, created_at) \
             VALUES ($1, 'old-group', $2, '2025-01-01T00:00:00Z')",
        )
        .bind(TENANT)
        .bind(std_b64(&gk.to_bytes()))
        .execute(&w.db)
        .await
        .unwrap();
        sqlx::query("UPDATE e2e_users SET key_signature = '' WHERE user_id = 'alice'")
            .execute(&w.db)
            .await
            .unwrap();

        for id in ["old", "alice"] {
            let resp = w.call(&alice, 0, Method::GET, &route(&format!("/users/{id}")), None).await;
            assert_eq!((resp.status, &resp.body["key_signature"]), (200, &json!("")), "{resp:?}");
            let view: wire::UserKeysView = serde_json::from_value(resp.body).unwrap();
            assert_eq!(view.signed(id).unwrap_err(), wire::MalformedField("key_signature"));
        }
        let resp = w.call(&alice, 0, Method::GET, &route("/groups/old-group"), None).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            resp.body,
            json!({
                "group": "old-group",
                "public_key": wire::b64::encode(&gk.to_bytes()),
                "members": [],
                "admins": [],
                "key_signature": "",
            })
        );
        let view: wire::GroupView = serde_json::from_value(resp.body).unwrap();
        assert_eq!(view.signed_key().unwrap_err(), wire::MalformedField("creator"));
        // The decrypt answers, with the author's keys unsigned: the reader refuses them.
        let resp = w.call(&alice, 0, Method::POST, &route("/documents/note/decrypt"), None).await;
        assert_eq!((resp.status, &resp.body["author_user"]["key_signature"]), (200, &json!("")));
        let answer: wire::DecryptResponse = serde_json::from_value(resp.body).unwrap();
        assert_eq!(
            keyhold_e2e::DecryptGrant::try_from(&answer).unwrap_err(),
            wire::MalformedField("key_signature")
        );
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_e2e_bodies_as_the_wire_types_serialize() {
    let db = databases().await.remove(0);
    let b = TestBroker::start(&db).await;
    let doc: Value =
        b.http.get(b.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let schemas = &doc["components"]["schemas"];
    let cert = CertificateView {
        user: "u".into(),
        device: "d".into(),
        encryption_key: vec![1],
        signing_key: vec![2],
        signature: vec![3],
    };
    let keys = wire::UserKeysView {
        encryption_key: vec![1],
        signing_key: vec![2],
        key_signature: vec![3],
    };
    let samples: Vec<(&str, Value)> = vec![
        (
            "E2eCreateUser",
            json!(wire::CreateUser {
                user: "u".into(),
                sealed_keys: vec![1],
                key_signature: vec![2]
            }),
        ),
        ("E2eSealedKeys", json!(wire::SealedKeys { sealed_keys: vec![1] })),
        ("E2eUserKeys", json!(keys.clone())),
        ("E2eCertificate", json!(cert.clone())),
        (
            "E2eAuthorizeDevice",
            json!(AuthorizeDevice { certificate: cert.clone(), transform_key: vec![1] }),
        ),
        (
            "E2eCreateGroup",
            json!(wire::CreateGroup {
                group: "g".into(),
                public_key: vec![1],
                sealed_for_creator: vec![2],
                creator_membership: Some(vec![3]),
                key_signature: vec![4],
            }),
        ),
        (
            "E2eGroup",
            json!(wire::GroupView {
                group: "g".into(),
                public_key: vec![1],
                members: vec![],
                admins: vec![],
                creator: Some(cert.clone()),
                key_signature: vec![2],
            }),
        ),
        ("E2eAddMember", json!(wire::AddMember { transform_key: vec![1] })),
        ("E2eAddAdmin", json!(wire::AddAdmin { sealed_group_key: vec![1] })),
        ("E2eGroupKey", json!(wire::GroupKey { sealed_group_key: vec![1] })),
        ("E2eCreateDocument", json!(wire::CreateDocument { document: vec![1], grants: vec![] })),
        ("E2eAddGrant", json!(wire::AddGrant { grant: vec![1] })),
        (
            "E2eDecryptResponse",
            json!(wire::DecryptResponse {
                document: vec![1],
                author: cert,
                author_user: keys,
                author_revoked: true,
                value: vec![2],
                via_group: Some("g".into()),
            }),
        ),
        ("E2eErrorBody", json!(wire::ErrorBody { code: 1101, message: "m".into() })),
    ];
    for (name, sample) in samples {
        let mut described: Vec<&String> = schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}"))
            .keys()
            .collect();
        let mut sent: Vec<&String> = sample.as_object().unwrap().keys().collect();
        described.sort();
        sent.sort();
        assert_eq!(described, sent, "{name}");
    }
    b.stop().await;
}

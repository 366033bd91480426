//! Tenant secrets (deterministic encryption): the proxies' list and create routes, the Vendor
//! Bridge API's list and rotate routes, over a real port, on SQLite and (when
//! `KEYHOLD_TEST_POSTGRES_URL` is set) PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{PROXY_TOKEN, TestBroker, VENDOR_KEY, counts, databases};
use futures::StreamExt as _;
use serde_json::{Value, json};

const CREATE: &str = "/api/proxy/v1/tenant-secrets";
const LIST: &str = "/api/proxy/v1/tenant-secrets/list";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A proxy route with the proxy token.
async fn proxy_post(b: &TestBroker, path: &str, body: &Value) -> (u16, Value) {
    let r = b.http.post(b.url(path)).bearer_auth(PROXY_TOKEN).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create(
    b: &TestBroker,
    tenant: &str,
    path: &str,
    config: i64,
    wrapped: &[u8],
) -> (u16, Value) {
    let body = json!({"tenant_id": tenant, "secret_path": path, "kms_config_id": config, "wrapped": b64(wrapped)});
    proxy_post(b, CREATE, &body).await
}

async fn list(b: &TestBroker, tenant: &str, paths: &[&str]) -> Vec<Value> {
    let (status, body) =
        proxy_post(b, LIST, &json!({"tenant_id": tenant, "secret_paths": paths})).await;
    assert_eq!(status, 200, "{body}");
    body["secrets"].as_array().unwrap().clone()
}

fn keys(object: &Value) -> BTreeSet<&str> {
    object.as_object().unwrap().keys().map(String::as_str).collect()
}

fn ids(secrets: &[Value]) -> Vec<(i64, bool)> {
    secrets.iter().map(|s| (s["id"].as_i64().unwrap(), s["rotated"].as_bool().unwrap())).collect()
}

/// Adds a `local` KMS configuration; returns its id.
async fn add_config(b: &TestBroker, tenant: &str, key: &str) -> i64 {
    let (status, config) = b
        .post(
            &format!("/api/v1/tenants/{tenant}/kms-configs"),
            json!({"type": "local", "settings": {"key": key}}),
        )
        .await;
    assert_eq!(status, 201, "{config}");
    config["id"].as_i64().unwrap()
}

/// The tenant `acme` with two configurations (primary, active) and `globex` with one.
async fn setup(b: &TestBroker) -> (i64, i64, i64) {
    for t in ["acme", "globex"] {
        assert_eq!(b.post("/api/v1/tenants", json!({"id": t})).await.0, 201);
    }
    let primary = add_config(b, "acme", "acme-1").await;
    let active = add_config(b, "acme", "acme-2").await;
    let globex = add_config(b, "globex", "globex-1").await;
    (primary, active, globex)
}

async fn history(b: &TestBroker, tenant: &str) -> Vec<Value> {
    let (status, page) = b.get(&format!("/api/v1/tenants/{tenant}/history?limit=1000")).await;
    assert_eq!(status, 200);
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_and_a_second_create_returns_the_first() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, active, _) = setup(&b).await;
        let version = b.store.version().await.unwrap();

        let (status, first) = create(&b, "acme", "users", primary, b"wrapped by the KMS #1").await;
        assert_eq!(status, 201, "{name}: {first}");
        assert_eq!(first["created"], true);
        assert_eq!(keys(&first), BTreeSet::from(["secret", "created"]));
        let secret = &first["secret"];
        assert_eq!(
            keys(secret),
            BTreeSet::from([
                "id",
                "tenant_id",
                "secret_path",
                "kms_config_id",
                "wrapped",
                "rotated",
                "created_at"
            ]),
            "{name}: {secret}"
        );
        let id = secret["id"].as_i64().unwrap();
        assert!(id > 0 && id < (1 << 31));
        assert_eq!(secret["tenant_id"], "acme");
        assert_eq!(secret["secret_path"], "users");
        assert_eq!(secret["kms_config_id"], primary);
        assert_eq!(secret["wrapped"], b64(b"wrapped by the KMS #1"));
        assert_eq!(secret["rotated"], false);
        assert!(
            time::OffsetDateTime::parse(
                secret["created_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok()
        );
        assert!(b.store.version().await.unwrap() > version, "{name}: a change, a new version");

        let listed = list(&b, "acme", &["users", "orders"]).await;
        assert_eq!(listed, vec![secret.clone()], "{name}: the list shows the same object");

        // The same tenant, path and configuration: the first one back, nothing stored.
        let version = b.store.version().await.unwrap();
        let (status, again) = create(&b, "acme", "users", primary, b"wrapped by the KMS #2").await;
        assert_eq!(status, 200, "{name}: {again}");
        assert_eq!(again["created"], false);
        assert_eq!(&again["secret"], secret, "{name}: the first secret, its wrapped bytes");
        assert_eq!(b.store.version().await.unwrap(), version, "{name}: nothing changed");
        assert_eq!(list(&b, "acme", &["users"]).await.len(), 1);

        // Another path, another configuration of the tenant: secrets of their own.
        let (status, orders) = create(&b, "acme", "orders", primary, b"orders").await;
        assert_eq!(status, 201);
        let (status, users2) = create(&b, "acme", "users", active, b"users under config 2").await;
        assert_eq!(status, 201, "{name}: an active configuration may wrap: {users2}");
        let listed = list(&b, "acme", &["users", "orders", "users"]).await;
        let expected = vec![
            id,
            orders["secret"]["id"].as_i64().unwrap(),
            users2["secret"]["id"].as_i64().unwrap(),
        ];
        assert_eq!(
            listed.iter().map(|s| s["id"].as_i64().unwrap()).collect::<Vec<_>>(),
            expected,
            "{name}: by id, each once"
        );
        assert!(expected.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(list(&b, "acme", &["orders"]).await.len(), 1);
        assert!(list(&b, "acme", &["nothing here"]).await.is_empty());
        assert!(list(&b, "acme", &[]).await.is_empty());
        // An unknown tenant: an empty list; another tenant sees none of acme's.
        assert!(list(&b, "nobody", &["users"]).await.is_empty());
        assert!(list(&b, "globex", &["users", "orders"]).await.is_empty());
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_converge_on_one_secret() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, active, _) = setup(&b).await;
        let n = 24;
        // Two paths and two configurations at once, each raced by n/4 proxies.
        let answers: Vec<(String, usize, u16, Value)> = futures::stream::iter(0..n)
            .map(|i| {
                let b = &b;
                async move {
                    let path = if i % 2 == 0 { "users" } else { "orders" };
                    let config = if i % 4 < 2 { primary } else { active };
                    let wrapped = format!("wrapped by proxy {i}");
                    let (status, body) = create(b, "acme", path, config, wrapped.as_bytes()).await;
                    (format!("{path}/{config}"), i, status, body)
                }
            })
            .buffer_unordered(n)
            .collect()
            .await;
        let groups: BTreeSet<&str> = answers.iter().map(|(k, ..)| k.as_str()).collect();
        assert_eq!(groups.len(), 4);
        for group in groups {
            let of: Vec<_> = answers.iter().filter(|(k, ..)| k == group).collect();
            let created: Vec<_> = of.iter().filter(|(.., s, _)| *s == 201).collect();
            assert_eq!(created.len(), 1, "{name} {group}: exactly one created: {of:?}");
            let winner = &created[0].3["secret"];
            for (_, _, status, body) in &of {
                assert!(*status == 201 || *status == 200, "{name}: {status} {body}");
                assert_eq!(body["created"], *status == 201);
                assert_eq!(&body["secret"], winner, "{name} {group}: everyone gets the winner's");
            }
        }
        let listed = list(&b, "acme", &["users", "orders"]).await;
        assert_eq!(listed.len(), 4, "{name}: one row per path and configuration");
        let creates = history(&b, "acme")
            .await
            .iter()
            .filter(|c| c["action"] == "tenant_secret.create")
            .count();
        assert_eq!(creates, 4, "{name}: one history record per secret stored");
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_of_one_path_or_all_and_the_next_create_makes_a_new_secret() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, _, globex_config) = setup(&b).await;
        let users1 =
            create(&b, "acme", "users", primary, b"u1").await.1["secret"]["id"].as_i64().unwrap();
        let orders1 =
            create(&b, "acme", "orders", primary, b"o1").await.1["secret"]["id"].as_i64().unwrap();
        let globex1 = create(&b, "globex", "users", globex_config, b"g1").await.1["secret"]["id"]
            .as_i64()
            .unwrap();

        // One path.
        let (status, rotated) = b
            .post("/api/v1/tenants/acme/tenant-secrets/rotate", json!({"secret_path": "users"}))
            .await;
        assert_eq!((status, &rotated), (200, &json!({"rotated": 1})), "{name}");
        assert_eq!(
            ids(&list(&b, "acme", &["users", "orders"]).await),
            [(users1, true), (orders1, false)],
            "{name}: only users rotated"
        );
        assert_eq!(ids(&list(&b, "globex", &["users"]).await), [(globex1, false)]);

        // The next create makes a new secret (a new id); the old one stays, rotated.
        let (status, users2) = create(&b, "acme", "users", primary, b"u2").await;
        assert_eq!(status, 201, "{name}: {users2}");
        let users2 = users2["secret"]["id"].as_i64().unwrap();
        assert!(users2 > users1 && users2 > globex1);
        let listed = list(&b, "acme", &["users"]).await;
        assert_eq!(ids(&listed), [(users1, true), (users2, false)]);
        assert_eq!(listed[0]["wrapped"], b64(b"u1"), "{name}: the rotated one still unwraps");
        // And converges again.
        let (status, again) = create(&b, "acme", "users", primary, b"u3").await;
        assert_eq!((status, again["secret"]["id"].as_i64()), (200, Some(users2)));

        // Every path ({} and no body at all).
        let (status, rotated) =
            b.post("/api/v1/tenants/acme/tenant-secrets/rotate", json!({})).await;
        assert_eq!((status, &rotated), (200, &json!({"rotated": 2})), "{name}");
        assert_eq!(
            ids(&list(&b, "acme", &["users", "orders"]).await),
            [(users1, true), (orders1, true), (users2, true)]
        );
        assert_eq!(ids(&list(&b, "globex", &["users"]).await), [(globex1, false)], "{name}");
        // Nothing left to rotate: a no-op (no record, same version).
        let version = b.store.version().await.unwrap();
        let records = history(&b, "acme").await.len();
        let r = b
            .http
            .post(b.url("/api/v1/tenants/acme/tenant-secrets/rotate"))
            .bearer_auth(VENDOR_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"rotated": 0}));
        assert_eq!(b.store.version().await.unwrap(), version, "{name}");
        assert_eq!(history(&b, "acme").await.len(), records);

        let (status, orders2) = create(&b, "acme", "orders", primary, b"o2").await;
        assert_eq!(status, 201, "{orders2}");

        // The vendor's list: every secret, rotated_at set on the rotated ones.
        let (status, body) = b.get("/api/v1/tenants/acme/tenant-secrets").await;
        assert_eq!(status, 200, "{body}");
        let secrets = body["secrets"].as_array().unwrap();
        assert_eq!(
            ids(secrets),
            [
                (users1, true),
                (orders1, true),
                (users2, true),
                (orders2["secret"]["id"].as_i64().unwrap(), false)
            ]
        );
        for s in secrets {
            assert_eq!(s["rotated_at"].is_string(), s["rotated"] == true, "{s}");
        }

        // Refusals.
        let (status, body) =
            b.post("/api/v1/tenants/nobody/tenant-secrets/rotate", json!({})).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        for bad in [
            json!({"secret_path": ""}),
            json!({"secret_path": "x".repeat(1025)}),
            json!({"path": "users"}),
            json!([]),
        ] {
            let (status, body) =
                b.post("/api/v1/tenants/acme/tenant-secrets/rotate", bad.clone()).await;
            assert_eq!((status, body["code"].as_str()), (400, Some("invalid_field")), "{bad}");
        }
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_creation_wake_the_proxies_long_polls() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, _, _) = setup(&b).await;
        create(&b, "acme", "users", primary, b"u1").await;
        for step in ["rotate", "create"] {
            let r = b
                .http
                .get(b.url("/api/proxy/v1/snapshot"))
                .bearer_auth(PROXY_TOKEN)
                .send()
                .await
                .unwrap();
            let etag = r.headers()["etag"].to_str().unwrap().to_owned();
            let poll = tokio::spawn({
                let http = b.http.clone();
                let url = b.url("/api/proxy/v1/snapshot?wait=30");
                async move {
                    let r = http
                        .get(url)
                        .bearer_auth(PROXY_TOKEN)
                        .header("if-none-match", etag)
                        .send()
                        .await
                        .unwrap();
                    (r.status().as_u16(), r.headers()["etag"].to_str().unwrap().to_owned())
                }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let changed_at = Instant::now();
            if step == "rotate" {
                let (status, _) = b
                    .post(
                        "/api/v1/tenants/acme/tenant-secrets/rotate",
                        json!({"secret_path": "users"}),
                    )
                    .await;
                assert_eq!(status, 200);
            } else {
                assert_eq!(create(&b, "acme", "users", primary, b"u2").await.0, 201);
            }
            let (status, new_etag) = poll.await.unwrap();
            assert_eq!(status, 200, "{name} {step}: a new snapshot version");
            assert!(
                changed_at.elapsed() < Duration::from_millis(1500),
                "{name} {step}: answered {:?} after the change",
                changed_at.elapsed()
            );
            assert_eq!(new_etag, format!("\"{}\"", b.store.version().await.unwrap()));
        }
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_creates_and_lists_store_nothing() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, active, globex) = setup(&b).await;
        let disabled = add_config(&b, "acme", "acme-3").await;
        let (status, _) = b
            .post(&format!("/api/v1/tenants/acme/kms-configs/{disabled}/disable"), json!({}))
            .await;
        assert_eq!(status, 200);
        let before = (counts(&b.store).await, history(&b, "acme").await.len());

        let ok = |path: &str, config: i64, wrapped: String| json!({"tenant_id": "acme", "secret_path": path, "kms_config_id": config, "wrapped": wrapped});
        let max = "é".repeat(512); // 1024 bytes
        let cases: Vec<(Value, u16, &str)> = vec![
            // Unknown tenant.
            (
                json!({"tenant_id": "nobody", "secret_path": "users", "kms_config_id": primary, "wrapped": b64(b"w")}),
                404,
                "not_found",
            ),
            (
                json!({"tenant_id": "", "secret_path": "users", "kms_config_id": primary, "wrapped": b64(b"w")}),
                404,
                "not_found",
            ),
            // Another tenant's configuration, a disabled one, one that does not exist.
            (ok("users", globex, b64(b"w")), 409, "conflict"),
            (ok("users", disabled, b64(b"w")), 409, "conflict"),
            (ok("users", 999_999, b64(b"w")), 409, "conflict"),
            // Wrapped: not base64, base64url, no padding, empty, too large.
            (ok("users", primary, "not base64!".into()), 400, "invalid_field"),
            (ok("users", primary, "-_-_".into()), 400, "invalid_field"),
            (ok("users", primary, "AAE".into()), 400, "invalid_field"),
            (ok("users", primary, String::new()), 400, "invalid_field"),
            (ok("users", primary, b64(&vec![1u8; 16 * 1024 + 1])), 400, "invalid_field"),
            // Path: empty, too long, NUL.
            (ok("", primary, b64(b"w")), 400, "invalid_field"),
            (ok(&format!("{max}x"), primary, b64(b"w")), 400, "invalid_field"),
            (ok("a\0b", primary, b64(b"w")), 400, "invalid_field"),
            // Malformed bodies.
            (
                json!({"tenant_id": "acme", "secret_path": "users", "kms_config_id": primary}),
                400,
                "invalid_field",
            ),
            (
                json!({"tenant_id": "acme", "secret_path": "users", "kms_config_id": "1", "wrapped": b64(b"w")}),
                400,
                "invalid_field",
            ),
            (
                json!({"tenant_id": "acme", "secret_path": "users", "kms_config_id": primary, "wrapped": b64(b"w"), "extra": 1}),
                400,
                "invalid_field",
            ),
        ];
        for (body, status, code) in &cases {
            let (got, answer) = proxy_post(&b, CREATE, body).await;
            assert_eq!(
                (got, answer["code"].as_str()),
                (*status, Some(*code)),
                "{name}: {body} → {answer}"
            );
            assert!(!answer["message"].as_str().unwrap().is_empty());
        }
        let (_, answer) = proxy_post(&b, CREATE, &ok("users", disabled, b64(b"w"))).await;
        assert!(answer["message"].as_str().unwrap().contains("disabled"), "{answer}");

        let list_cases: Vec<Value> = vec![
            json!({"tenant_id": "acme", "secret_paths": (0..1001).map(|i| format!("p{i}")).collect::<Vec<_>>()}),
            json!({"tenant_id": "acme", "secret_paths": ["users", ""]}),
            json!({"tenant_id": "acme", "secret_paths": ["x".repeat(1025)]}),
            json!({"tenant_id": "acme"}),
            json!({"tenant_id": "acme", "secret_paths": "users"}),
        ];
        for body in &list_cases {
            let (got, answer) = proxy_post(&b, LIST, body).await;
            assert_eq!(
                (got, answer["code"].as_str()),
                (400, Some("invalid_field")),
                "{name}: {answer}"
            );
        }
        assert_eq!(
            (counts(&b.store).await, history(&b, "acme").await.len()),
            before,
            "{name}: refused requests stored nothing"
        );
        assert!(list(&b, "acme", &["users"]).await.is_empty());

        // The limits themselves are accepted.
        let thousand: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        let (status, _) =
            proxy_post(&b, LIST, &json!({"tenant_id": "acme", "secret_paths": thousand})).await;
        assert_eq!(status, 200);
        let (status, body) =
            proxy_post(&b, CREATE, &ok(&max, active, b64(&vec![9u8; 16 * 1024]))).await;
        assert_eq!(status, 201, "{name}: {body}");
        assert_eq!(list(&b, "acme", &[max.as_str()]).await.len(), 1);
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendor_list_never_holds_wrapped_bytes() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, _, _) = setup(&b).await;
        let wrapped = b"the KMS ciphertext of a tenant secret";
        let (_, created) = create(&b, "acme", "users", primary, wrapped).await;
        let r = b
            .http
            .get(b.url("/api/v1/tenants/acme/tenant-secrets"))
            .bearer_auth(VENDOR_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(!text.contains(&b64(wrapped)), "{name}: {text}");
        assert!(!text.contains("wrapped"), "{name}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(keys(&body), BTreeSet::from(["secrets"]));
        let secret = &body["secrets"][0];
        assert_eq!(
            keys(secret),
            BTreeSet::from([
                "id",
                "secret_path",
                "kms_config_id",
                "rotated",
                "created_at",
                "rotated_at"
            ])
        );
        assert_eq!(secret["id"], created["secret"]["id"]);
        assert_eq!(
            (
                &secret["secret_path"],
                &secret["kms_config_id"],
                &secret["rotated"],
                &secret["rotated_at"]
            ),
            (&json!("users"), &json!(primary), &json!(false), &Value::Null)
        );
        assert_eq!(secret["created_at"], created["secret"]["created_at"]);
        let (status, body) = b.get("/api/v1/tenants/globex/tenant-secrets").await;
        assert_eq!((status, body), (200, json!({"secrets": []})));
        let (status, body) = b.get("/api/v1/tenants/nobody/tenant-secrets").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        // Nor does the history, nor the snapshot.
        assert!(
            !serde_json::to_string(&history(&b, "acme").await).unwrap().contains(&b64(wrapped))
        );
        let snapshot = b
            .http
            .get(b.url("/api/proxy/v1/snapshot"))
            .bearer_auth(PROXY_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let envelope: keyhold_core::snapshot::SignedSnapshot =
            serde_json::from_str(&snapshot).unwrap();
        let payload = base64::engine::general_purpose::STANDARD.decode(&envelope.payload).unwrap();
        assert!(!String::from_utf8(payload).unwrap().contains(&b64(wrapped)));
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_need_the_proxy_token_and_vendor_routes_the_vendor_key() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, _, _) = setup(&b).await;
        let before = counts(&b.store).await;
        let create_body = json!({"tenant_id": "acme", "secret_path": "users", "kms_config_id": primary, "wrapped": b64(b"w")});
        let list_body = json!({"tenant_id": "acme", "secret_paths": ["users"]});
        let wrong = [
            None,
            Some(format!("Bearer {VENDOR_KEY}")),
            Some("Bearer wrong-token-0123456789abcdef".to_owned()),
            Some(format!("Basic {PROXY_TOKEN}")),
        ];
        for auth in &wrong {
            for (path, body) in [(CREATE, &create_body), (LIST, &list_body)] {
                let mut req = b.http.post(b.url(path)).json(body);
                if let Some(auth) = auth {
                    req = req.header("authorization", auth);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 401, "{name}: {path} with {auth:?}");
                assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
            }
        }
        let wrong = [
            None,
            Some(format!("Bearer {PROXY_TOKEN}")),
            Some("Bearer wrong-key-0123456789abcdef".to_owned()),
        ];
        for auth in &wrong {
            let mut get = b.http.get(b.url("/api/v1/tenants/acme/tenant-secrets"));
            let mut rotate =
                b.http.post(b.url("/api/v1/tenants/acme/tenant-secrets/rotate")).json(&json!({}));
            if let Some(auth) = auth {
                get = get.header("authorization", auth);
                rotate = rotate.header("authorization", auth);
            }
            for r in [get.send().await.unwrap(), rotate.send().await.unwrap()] {
                assert_eq!(r.status(), 401, "{name}: with {auth:?}");
                assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
            }
        }
        assert_eq!(counts(&b.store).await, before, "{name}: nothing stored");
        assert!(list(&b, "acme", &["users"]).await.is_empty());
        b.stop().await;
    }
}

async fn call(
    b: &TestBroker,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = b.http.request(method, b.url(path)).header("Cookie", cookie);
    if let Some(csrf) = csrf {
        r = r.header("X-CSRF-Token", csrf);
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admins_list_and_rotate_their_own_tenants_secrets_only() {
    use reqwest::Method;
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, _, globex) = setup(&b).await;
        create(&b, "acme", "users", primary, b"u1").await;
        create(&b, "globex", "users", globex, b"g1").await;
        // An admin of acme, signed in.
        let r =
            b.new_admin_session("acme", "alice@example.com", "correct horse battery staple").await;
        let cookie =
            r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let csrf = r.json::<Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();

        let (status, body) =
            call(&b, Method::GET, "/api/v1/tenants/acme/tenant-secrets", &cookie, None, None).await;
        assert_eq!((status, body["secrets"].as_array().map(Vec::len)), (200, Some(1)), "{name}");
        let rotate = "/api/v1/tenants/acme/tenant-secrets/rotate";
        let (status, body) = call(&b, Method::POST, rotate, &cookie, None, Some(json!({}))).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("csrf_token_missing")));
        let (status, body) =
            call(&b, Method::POST, rotate, &cookie, Some(&csrf), Some(json!({}))).await;
        assert_eq!((status, body), (200, json!({"rotated": 1})), "{name}");
        let last = history(&b, "acme").await.last().unwrap().clone();
        assert_eq!(
            (last["action"].as_str(), last["actor"].as_str()),
            (Some("tenant_secret.rotate"), Some("admin:alice@example.com"))
        );
        // Another tenant's: forbidden, and nothing rotated.
        for (method, path) in [
            (Method::GET, "/api/v1/tenants/globex/tenant-secrets"),
            (Method::POST, "/api/v1/tenants/globex/tenant-secrets/rotate"),
        ] {
            let (status, body) =
                call(&b, method, path, &cookie, Some(&csrf), Some(json!({}))).await;
            assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{name}: {path}");
        }
        assert!(!ids(&list(&b, "globex", &["users"]).await)[0].1, "{name}: not rotated");
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_and_rotation_are_recorded_and_reach_the_admin_events_feed() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        let (primary, _, _) = setup(&b).await;
        let wrapped = b"wrapped secret bytes";
        let (_, created) = create(&b, "acme", "users", primary, wrapped).await;
        let id = created["secret"]["id"].as_i64().unwrap();
        create(&b, "acme", "users", primary, b"a duplicate: not recorded").await;
        create(&b, "acme", "orders", primary, b"o1").await;
        b.post("/api/v1/tenants/acme/tenant-secrets/rotate", json!({"secret_path": "users"})).await;
        b.post("/api/v1/tenants/acme/tenant-secrets/rotate", json!({})).await;

        let records: Vec<Value> = history(&b, "acme")
            .await
            .into_iter()
            .filter(|c| c["action"].as_str().unwrap().starts_with("tenant_secret."))
            .collect();
        let summary: Vec<(&str, &str, &Value)> = records
            .iter()
            .map(|c| (c["action"].as_str().unwrap(), c["actor"].as_str().unwrap(), &c["detail"]))
            .collect();
        let orders = records[1]["detail"]["id"].clone();
        assert_eq!(
            summary,
            vec![
                (
                    "tenant_secret.create",
                    "proxy",
                    &json!({"id": id, "secret_path": "users", "kms_config_id": primary})
                ),
                (
                    "tenant_secret.create",
                    "proxy",
                    &json!({"id": orders, "secret_path": "orders", "kms_config_id": primary})
                ),
                (
                    "tenant_secret.rotate",
                    "vendor",
                    &json!({"secret_path": "users", "all_paths": false, "rotated": 1})
                ),
                (
                    "tenant_secret.rotate",
                    "vendor",
                    &json!({"secret_path": null, "all_paths": true, "rotated": 1})
                ),
            ],
            "{name}"
        );
        let text = serde_json::to_string(&records).unwrap();
        assert!(!text.contains(&b64(wrapped)) && !text.contains("wrapped"), "{name}: {text}");

        // The admin-events feed hands them to the proxy that writes the tenant's trail.
        let (status, batch) =
            proxy_post(&b, "/api/proxy/v1/admin-events/claim", &json!({"proxy": "proxy-a"})).await;
        assert_eq!(status, 200, "{batch}");
        let fed: Vec<(String, Value)> = batch["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["tenant"] == "acme" && c["action"].as_str().unwrap().starts_with("tenant_secret.")
            })
            .map(|c| (c["action"].as_str().unwrap().to_owned(), c["detail"].clone()))
            .collect();
        let expected: Vec<(String, Value)> = records
            .iter()
            .map(|c| (c["action"].as_str().unwrap().to_owned(), c["detail"].clone()))
            .collect();
        assert_eq!(fed, expected, "{name}");
        b.stop().await;
    }
}

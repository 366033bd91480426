//! Tenant admins: invitation → admin (password + TOTP) → session cookie with CSRF token → own
//! tenant only; over a real port, on SQLite and (when `KEYHOLD_TEST_POSTGRES_URL` is set)
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{TestBroker, VENDOR_KEY, counts, databases};
use keyhold_broker::credentials::totp_code;
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

/// A request with optional session cookie, CSRF header and JSON body (no vendor key).
async fn call(
    b: &TestBroker,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut r = b.http.request(method, b.url(path));
    if let Some(cookie) = cookie {
        r = r.header("Cookie", cookie);
    }
    if let Some(csrf) = csrf {
        r = r.header("X-CSRF-Token", csrf);
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn assert_error(got: &(u16, Value, reqwest::header::HeaderMap), status: u16, code: &str, db: &str) {
    assert_eq!((got.0, got.1["code"].as_str()), (status, Some(code)), "{db}: {}", got.1);
}

async fn history_len(b: &TestBroker, tenant: &str) -> usize {
    let (status, page) = b.get(&format!("/api/v1/tenants/{tenant}/history?limit=1000")).await;
    assert_eq!(status, 200);
    page["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitation_login_csrf_roles_logout() {
    for db in databases().await {
        let started = Instant::now();
        let name = db.name;
        let b = TestBroker::start(&db).await;
        for t in ["acme", "globex"] {
            assert_eq!(b.post("/api/v1/tenants", json!({"id": t})).await.0, 201);
        }

        // ---- invitation → admin -----------------------------------------------------------
        let (status, inv) =
            b.post("/api/v1/tenants/acme/invitations", json!({"email": "Alice@Example.com"})).await;
        assert_eq!(status, 201);
        let token = inv["token"].as_str().unwrap().to_owned();
        let accept = |password: &str| json!({"token": token, "password": password});

        let weak =
            call(&b, Method::POST, "/api/v1/invitations/accept", None, None, Some(accept("short")))
                .await;
        assert_error(&weak, 400, "invalid_field", name);
        let unknown = call(
            &b,
            Method::POST,
            "/api/v1/invitations/accept",
            None,
            None,
            Some(json!({"token": "no-such-token", "password": PASSWORD})),
        )
        .await;
        assert_error(&unknown, 404, "not_found", name);

        let (status, admin, headers) = call(
            &b,
            Method::POST,
            "/api/v1/invitations/accept",
            None,
            None,
            Some(accept(PASSWORD)),
        )
        .await;
        assert_eq!(status, 201, "{name}: {admin}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(admin["tenant"], "acme");
        assert_eq!(admin["email"], "alice@example.com");
        let secret = admin["totp_secret"].as_str().unwrap().to_owned();
        assert!(admin["otpauth_url"].as_str().unwrap().starts_with("otpauth://totp/Keyhold:"));
        assert!(admin["otpauth_url"].as_str().unwrap().contains(&secret));

        let reused = call(
            &b,
            Method::POST,
            "/api/v1/invitations/accept",
            None,
            None,
            Some(accept(PASSWORD)),
        )
        .await;
        assert_error(&reused, 409, "invitation_used", name);

        // An invitation whose expiry is already past (created through the store, TTL 0).
        let (_, expired_token) = b
            .store
            .create_invitation("vendor", "acme", "bob@example.com", Duration::ZERO)
            .await
            .unwrap();
        let expired = call(
            &b,
            Method::POST,
            "/api/v1/invitations/accept",
            None,
            None,
            Some(json!({"token": expired_token.as_str(), "password": PASSWORD})),
        )
        .await;
        assert_error(&expired, 410, "invitation_expired", name);

        // ---- sign in ----------------------------------------------------------------------------
        let login = |email: &str, password: &str, totp: String| json!({"email": email, "password": password, "totp": totp});
        let good_code = totp_code(&secret, now()).unwrap();
        let wrong_code = if good_code == "000000" { "111111" } else { "000000" }.to_owned();
        let wrong_totp = call(
            &b,
            Method::POST,
            "/api/v1/session",
            None,
            None,
            Some(login("alice@example.com", PASSWORD, wrong_code.clone())),
        )
        .await;
        assert_error(&wrong_totp, 401, "unauthorized", name);
        assert!(wrong_totp.2.get("set-cookie").is_none());
        let wrong_password = call(
            &b,
            Method::POST,
            "/api/v1/session",
            None,
            None,
            Some(login("alice@example.com", "not the password!", good_code.clone())),
        )
        .await;
        assert_error(&wrong_password, 401, "unauthorized", name);
        let nobody = call(
            &b,
            Method::POST,
            "/api/v1/session",
            None,
            None,
            Some(login("nobody@example.com", PASSWORD, good_code.clone())),
        )
        .await;
        assert_error(&nobody, 401, "unauthorized", name);
        assert_eq!(wrong_totp.1["message"], wrong_password.1["message"], "no enumeration");
        assert_eq!(wrong_totp.1["message"], nobody.1["message"], "no enumeration");

        // The address is case-insensitive; the code is computed here from the secret.
        let (status, session, headers) = call(
            &b,
            Method::POST,
            "/api/v1/session",
            None,
            None,
            Some(login("ALICE@example.com", PASSWORD, totp_code(&secret, now()).unwrap())),
        )
        .await;
        assert_eq!(status, 200, "{name}: {session}");
        let set_cookie = headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(set_cookie.starts_with("keyhold_session="), "{set_cookie}");
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(set_cookie.contains(attr), "{set_cookie} lacks {attr}");
        }
        assert!(!set_cookie.contains("Secure"), "secure_cookies is off by default");
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let csrf = session["csrf_token"].as_str().unwrap().to_owned();
        assert_eq!(session["tenant"], "acme");
        assert_eq!(session["email"], "alice@example.com");
        assert!(session["expires_at"].as_str().is_some());

        // The same code again: refused (a code is accepted once).
        let replay = call(
            &b,
            Method::POST,
            "/api/v1/session",
            None,
            None,
            Some(login("alice@example.com", PASSWORD, totp_code(&secret, now() - 30).unwrap())),
        )
        .await;
        assert_error(&replay, 401, "unauthorized", name);

        // Who am I (a reloaded page gets its CSRF token back).
        let (status, me, _) =
            call(&b, Method::GET, "/api/v1/session", Some(&cookie), None, None).await;
        assert_eq!(status, 200);
        assert_eq!(
            (me["csrf_token"].as_str(), me["tenant"].as_str()),
            (Some(&*csrf), Some("acme"))
        );
        assert_error(
            &call(&b, Method::GET, "/api/v1/session", None, None, None).await,
            401,
            "unauthorized",
            name,
        );

        // ---- own tenant with cookie + CSRF ------------------------------------------------------
        let kms = json!({"type": "local", "settings": {"key": "acme-key"}});
        let path = "/api/v1/tenants/acme/kms-configs";
        let before = (counts(&b.store).await, history_len(&b, "acme").await);
        let no_csrf = call(&b, Method::POST, path, Some(&cookie), None, Some(kms.clone())).await;
        assert_error(&no_csrf, 403, "csrf_token_missing", name);
        let bad_csrf =
            call(&b, Method::POST, path, Some(&cookie), Some("not-the-token"), Some(kms.clone()))
                .await;
        assert_error(&bad_csrf, 403, "csrf_token_invalid", name);
        assert_eq!(
            (counts(&b.store).await, history_len(&b, "acme").await),
            before,
            "{name}: refused requests stored nothing"
        );

        let (status, added, _) =
            call(&b, Method::POST, path, Some(&cookie), Some(&csrf), Some(kms.clone())).await;
        assert_eq!(status, 201, "{name}: {added}");
        assert_eq!(added["managed_by"], "tenant", "{name}: the tenant's admin added it");
        let (_, history) = b.get("/api/v1/tenants/acme/history?limit=1000").await;
        let last = history["items"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (last["action"].as_str(), last["actor"].as_str()),
            (Some("kms_config.add"), Some("admin:alice@example.com"))
        );
        let accepted = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["action"] == "admin.create")
            .unwrap();
        assert_eq!(accepted["actor"], "admin:alice@example.com");

        // Reads need no CSRF token.
        for read in [
            "/api/v1/tenants/acme",
            path,
            "/api/v1/tenants/acme/siem-configs",
            "/api/v1/tenants/acme/history",
            "/api/v1/tenants/acme/kms-usage",
        ] {
            let (status, body, _) = call(&b, Method::GET, read, Some(&cookie), None, None).await;
            assert_eq!(status, 200, "{name}: {read}: {body}");
        }
        let id = added["id"].as_i64().unwrap();
        let (status, _, _) = call(
            &b,
            Method::POST,
            &format!("{path}/{id}/disable"),
            Some(&cookie),
            Some(&csrf),
            None,
        )
        .await;
        assert_eq!(status, 200);

        // ---- other tenant, vendor-only routes ---------------------------------------------------
        let before = (counts(&b.store).await, history_len(&b, "globex").await);
        let forbidden: Vec<(Method, &str, Option<Value>)> = vec![
            (Method::GET, "/api/v1/tenants/globex", None),
            (Method::GET, "/api/v1/tenants/globex/kms-configs", None),
            (Method::POST, "/api/v1/tenants/globex/kms-configs", Some(kms.clone())),
            (Method::GET, "/api/v1/tenants/globex/history", None),
            (Method::POST, "/api/v1/tenants/globex/invitations", Some(json!({"email": "e@x.io"}))),
            (Method::GET, "/api/v1/tenants/nonexistent", None),
            // Vendor-only.
            (Method::GET, "/api/v1/tenants", None),
            (Method::POST, "/api/v1/tenants", Some(json!({"id": "evil"}))),
            (Method::POST, "/api/v1/tenants/acme/disable", None),
            (Method::POST, "/api/v1/tenants/acme/enable", None),
            // Vendor-managed keys are the vendor's to make, even for the admin's own tenant.
            (Method::POST, "/api/v1/tenants/acme/vendor-keys", Some(json!({}))),
            (Method::GET, "/api/v1/tenants/globex/kms-usage", None),
        ];
        for (method, path, body) in forbidden {
            let got = call(&b, method.clone(), path, Some(&cookie), Some(&csrf), body).await;
            assert_error(&got, 403, "forbidden", &format!("{name} {method} {path}"));
        }
        assert_eq!((counts(&b.store).await, history_len(&b, "globex").await), before);

        // ---- rate limit: 5 failures for an address in 15 minutes → 429 ----------------------
        for _ in 0..5 {
            let got = call(
                &b,
                Method::POST,
                "/api/v1/session",
                None,
                None,
                Some(login("mallory@example.com", PASSWORD, wrong_code.clone())),
            )
            .await;
            assert_error(&got, 401, "unauthorized", name);
        }
        let limited = call(
            &b,
            Method::POST,
            "/api/v1/session",
            None,
            None,
            Some(login("mallory@example.com", PASSWORD, wrong_code.clone())),
        )
        .await;
        assert_error(&limited, 429, "rate_limited", name);

        // ---- sign out -----------------------------------------------------------------------------
        let no_csrf = call(&b, Method::DELETE, "/api/v1/session", Some(&cookie), None, None).await;
        assert_error(&no_csrf, 403, "csrf_token_missing", name);
        let (status, _, headers) =
            call(&b, Method::DELETE, "/api/v1/session", Some(&cookie), Some(&csrf), None).await;
        assert_eq!(status, 204);
        assert!(headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
        for (method, path) in
            [(Method::GET, "/api/v1/session"), (Method::GET, "/api/v1/tenants/acme")]
        {
            let got = call(&b, method, path, Some(&cookie), Some(&csrf), None).await;
            assert_error(&got, 401, "unauthorized", name);
        }
        let got = call(&b, Method::POST, path, Some(&cookie), Some(&csrf), Some(kms.clone())).await;
        assert_error(&got, 401, "unauthorized", name);

        // The vendor key still works everywhere, recorded as `vendor`; a wrong key is 401.
        assert_eq!(b.post("/api/v1/tenants/acme/disable", json!({})).await.0, 200);
        let (_, history) = b.get("/api/v1/tenants/acme/history?limit=1000").await;
        assert_eq!(history["items"].as_array().unwrap().last().unwrap()["actor"], "vendor");
        let r = b
            .http
            .get(b.url("/api/v1/tenants"))
            .bearer_auth(format!("{VENDOR_KEY}x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);

        // The OpenAPI document lists the new routes.
        let (_, doc) = b.get("/api/openapi.json").await;
        for p in ["/api/v1/session", "/api/v1/invitations/accept"] {
            assert!(doc["paths"].get(p).is_some(), "{p} missing from OpenAPI");
        }
        assert!(doc["components"]["securitySchemes"].get("session_cookie").is_some());
        eprintln!("{name}: sessions test in {:?}", started.elapsed());
        b.stop().await;
    }
}

/// A tenant admin of `tenant`, invited and accepted: (admin id, TOTP secret).
async fn enroll(b: &TestBroker, tenant: &str, email: &str) -> (i64, String) {
    let (_, token) =
        b.store.create_invitation("vendor", tenant, email, Duration::from_secs(600)).await.unwrap();
    let (status, admin, _) = call(
        b,
        Method::POST,
        "/api/v1/invitations/accept",
        None,
        None,
        Some(json!({"token": token.as_str(), "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 201, "{admin}");
    (admin["admin_id"].as_i64().unwrap(), admin["totp_secret"].as_str().unwrap().to_owned())
}

/// Signs in with the TOTP code of `at` (Unix seconds): the status, and the cookie and CSRF
/// token on success.
async fn sign_in(b: &TestBroker, email: &str, secret: &str, at: u64) -> (u16, String, String) {
    let login =
        json!({"email": email, "password": PASSWORD, "totp": totp_code(secret, at).unwrap()});
    let (status, body, headers) =
        call(b, Method::POST, "/api/v1/session", None, None, Some(login)).await;
    let cookie = headers
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .unwrap_or_default();
    (status, cookie, body["csrf_token"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_disabled_loses_every_session_at_once_and_cannot_sign_in_until_enabled() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        for t in ["acme", "globex"] {
            assert_eq!(b.post("/api/v1/tenants", json!({"id": t})).await.0, 201);
        }
        let (alice, alice_secret) = enroll(&b, "acme", "alice@example.com").await;
        let (bob, bob_secret) = enroll(&b, "acme", "bob@example.com").await;
        let (carol, _) = enroll(&b, "globex", "carol@example.com").await;
        // Bob signs in on two machines, with the codes of the previous and the current step
        // (each accepted once), so that a later sign-in with a newer code is not a replay.
        let (status, alice_cookie, alice_csrf) =
            sign_in(&b, "alice@example.com", &alice_secret, now()).await;
        assert_eq!(status, 200, "{name}");
        let (status, bob_laptop, _) = sign_in(&b, "bob@example.com", &bob_secret, now() - 30).await;
        assert_eq!(status, 200, "{name}");
        let whoami = |cookie: String| {
            let b = &b;
            async move { call(b, Method::GET, "/api/v1/session", Some(&cookie), None, None).await.0 }
        };
        assert_eq!(whoami(bob_laptop.clone()).await, 200);

        // Listed by the vendor and by the tenant's own admin, without secrets.
        let (status, list) = b.get("/api/v1/tenants/acme/admins").await;
        assert_eq!(status, 200, "{name}: {list}");
        let items = list["items"].as_array().unwrap();
        let emails: Vec<&str> = items.iter().map(|a| a["email"].as_str().unwrap()).collect();
        assert_eq!(emails, ["alice@example.com", "bob@example.com"], "{name}");
        for admin in items {
            let mut keys: Vec<&String> = admin.as_object().unwrap().keys().collect();
            keys.sort();
            assert_eq!(keys, ["admin_id", "created_at", "disabled", "email", "tenant"], "{name}");
        }
        let own =
            call(&b, Method::GET, "/api/v1/tenants/acme/admins", Some(&alice_cookie), None, None)
                .await;
        assert_eq!((own.0, own.1["items"].as_array().map(Vec::len)), (200, Some(2)), "{name}");
        let other =
            call(&b, Method::GET, "/api/v1/tenants/globex/admins", Some(&alice_cookie), None, None)
                .await;
        assert_error(&other, 403, "forbidden", name);

        // Refusals change nothing: no CSRF token, oneself, an unknown admin, another tenant's.
        let before = history_len(&b, "acme").await;
        let disable = |id: i64| format!("/api/v1/tenants/acme/admins/{id}/disable");
        let no_csrf = call(&b, Method::POST, &disable(bob), Some(&alice_cookie), None, None).await;
        assert_error(&no_csrf, 403, "csrf_token_missing", name);
        let herself =
            call(&b, Method::POST, &disable(alice), Some(&alice_cookie), Some(&alice_csrf), None)
                .await;
        assert_error(&herself, 409, "conflict", name);
        for id in [9999, carol] {
            let missing =
                call(&b, Method::POST, &disable(id), Some(&alice_cookie), Some(&alice_csrf), None)
                    .await;
            assert_error(&missing, 404, "not_found", name);
        }
        assert_eq!(history_len(&b, "acme").await, before, "{name}: a refusal was recorded");
        assert_eq!(whoami(bob_laptop.clone()).await, 200);

        // Alice disables Bob: his session ends at once, and he cannot sign in.
        let (status, disabled, _) =
            call(&b, Method::POST, &disable(bob), Some(&alice_cookie), Some(&alice_csrf), None)
                .await;
        assert_eq!((status, &disabled["disabled"]), (200, &json!(true)), "{name}: {disabled}");
        assert_eq!(whoami(bob_laptop.clone()).await, 401, "{name}: his session lives on");
        let (status, _, _) = sign_in(&b, "bob@example.com", &bob_secret, now()).await;
        assert_eq!(status, 401, "{name}: a disabled admin signed in");
        let (_, page) = b.get("/api/v1/tenants/acme/history?limit=1000").await;
        let last = page["items"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (&last["action"], &last["actor"], &last["detail"]["admin_id"]),
            (&json!("admin.disable"), &json!("admin:alice@example.com"), &json!(bob)),
            "{name}: {last}"
        );
        assert_eq!(last["detail"]["sessions_ended"], 1, "{name}: {last}");
        // Disabled again: nothing new to record.
        let again =
            call(&b, Method::POST, &disable(bob), Some(&alice_cookie), Some(&alice_csrf), None)
                .await;
        assert_eq!(again.0, 200);
        assert_eq!(history_len(&b, "acme").await, before + 1, "{name}");

        // The vendor enables him again: he signs in with a code newer than his last (the
        // refused attempt above used none: a disabled admin's code is not checked).
        let (status, enabled) =
            b.post(&format!("/api/v1/tenants/acme/admins/{bob}/enable"), json!({})).await;
        assert_eq!((status, &enabled["disabled"]), (200, &json!(false)), "{name}: {enabled}");
        let (status, cookie, _) = sign_in(&b, "bob@example.com", &bob_secret, now()).await;
        assert_eq!(status, 200, "{name}: not signed in after being enabled");
        assert_eq!(whoami(cookie).await, 200);
        assert_eq!(whoami(bob_laptop).await, 401, "{name}: an ended session came back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_revoked_before_it_is_accepted_no_longer_works() {
    for db in databases().await {
        let name = db.name;
        let b = TestBroker::start(&db).await;
        for t in ["acme", "globex"] {
            assert_eq!(b.post("/api/v1/tenants", json!({"id": t})).await.0, 201);
        }
        let (_, alice_secret) = enroll(&b, "acme", "alice@example.com").await;
        let (status, cookie, csrf) = sign_in(&b, "alice@example.com", &alice_secret, now()).await;
        assert_eq!(status, 200, "{name}");
        let mut tokens = Vec::new();
        for email in ["Dana@example.com", "dana@example.com", "erin@example.com"] {
            let (status, inv) =
                b.post("/api/v1/tenants/acme/invitations", json!({"email": email})).await;
            assert_eq!(status, 201, "{name}: {inv}");
            tokens.push(inv["token"].as_str().unwrap().to_owned());
        }
        b.store
            .create_invitation("vendor", "acme", "old@example.com", Duration::ZERO)
            .await
            .unwrap();
        let accept = |token: &str| {
            call(
                &b,
                Method::POST,
                "/api/v1/invitations/accept",
                None,
                None,
                Some(json!({"token": token, "password": PASSWORD})),
            )
        };
        let states = |list: &Value| -> Vec<(String, String)> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["email"].as_str().unwrap().to_lowercase(),
                        i["state"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };

        // Listed by the tenant's admin, without tokens; not another tenant's.
        let (status, list, _) =
            call(&b, Method::GET, "/api/v1/tenants/acme/invitations", Some(&cookie), None, None)
                .await;
        assert_eq!(status, 200, "{name}: {list}");
        let mut got = states(&list);
        got.sort();
        let expected = [
            ("alice@example.com", "used"),
            ("dana@example.com", "pending"),
            ("dana@example.com", "pending"),
            ("erin@example.com", "pending"),
            ("old@example.com", "expired"),
        ];
        assert_eq!(got, expected.map(|(e, s)| (e.to_owned(), s.to_owned())), "{name}");
        assert!(!list.to_string().contains("token"), "{name}: a token is listed: {list}");
        let other =
            call(&b, Method::GET, "/api/v1/tenants/globex/invitations", Some(&cookie), None, None)
                .await;
        assert_error(&other, 403, "forbidden", name);

        // Refusals record nothing: no CSRF token; an address without a pending invitation.
        let before = history_len(&b, "acme").await;
        let revoke = |email: &str, csrf: Option<&str>| {
            let (b, cookie) = (&b, cookie.clone());
            let (body, csrf) = (json!({"email": email}), csrf.map(str::to_owned));
            async move {
                let path = "/api/v1/tenants/acme/invitations/revoke";
                call(b, Method::POST, path, Some(&cookie), csrf.as_deref(), Some(body)).await
            }
        };
        assert_error(&revoke("dana@example.com", None).await, 403, "csrf_token_missing", name);
        for email in ["nobody@example.com", "old@example.com", "alice@example.com"] {
            assert_error(&revoke(email, Some(&csrf)).await, 404, "not_found", name);
        }
        assert_eq!(history_len(&b, "acme").await, before, "{name}: a refusal was recorded");

        // Both of Dana's links stop working; Erin's still works.
        let (status, revoked, _) = revoke("DANA@example.com", Some(&csrf)).await;
        assert_eq!((status, &revoked["revoked"]), (200, &json!(2)), "{name}: {revoked}");
        for token in &tokens[..2] {
            assert_error(&accept(token).await, 410, "invitation_revoked", name);
        }
        assert_error(&revoke("dana@example.com", Some(&csrf)).await, 404, "not_found", name);
        assert_eq!(accept(&tokens[2]).await.0, 201, "{name}");
        let (_, admins) = b.get("/api/v1/tenants/acme/admins").await;
        let emails: Vec<&str> = admins["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["email"].as_str().unwrap())
            .collect();
        assert_eq!(emails, ["alice@example.com", "erin@example.com"], "{name}");
        let (_, list) = b.get("/api/v1/tenants/acme/invitations").await;
        let dana: Vec<_> =
            states(&list).into_iter().filter(|(e, _)| e.starts_with("dana")).collect();
        assert!(dana.iter().all(|(_, s)| s == "revoked") && dana.len() == 2, "{name}: {list}");

        let (_, page) = b.get("/api/v1/tenants/acme/history?limit=1000").await;
        let revoke_record = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["action"] == "invitation.revoke")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (&revoke_record["actor"], &revoke_record["detail"]),
            (
                &json!("admin:alice@example.com"),
                &json!({"email": "dana@example.com", "revoked": 2})
            ),
            "{name}: {page}"
        );
    }
}

//! Key leasing against a real KMS (AWS KMS as LocalStack serves it): how many KMS calls,
//! outages, revocation, single-flight, and several proxies. Needs the servers `scripts/test`
//! starts (KEYHOLD_TEST_LOCALSTACK_URL).
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhold_core::edek::EncryptedDeks;
use keyhold_core::metadata::RequestMetadata;
use keyhold_kms::conformance::service_env;
use keyhold_proxy::error::ServiceError;
use keyhold_proxy::{AppState, ProxyConfig};

#[path = "common/localstack.rs"]
mod localstack;
#[path = "common/relay.rs"]
mod relay;
use relay::Relay;

const API_KEY: &str = "leasing-test-api-key-0123456789";
const TENANT: &str = "tenant-leasing";

/// A proxy (its in-process state) for one tenant on `key_arn` reached at `endpoint`.
async fn proxy(endpoint: &str, key_arn: &str, leasing: &str, dir: &tempfile::TempDir) -> AppState {
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        api_key = "{API_KEY}"
        kms_timeout_ms = 1500
        kms_attempt_timeout_ms = 500
        kms_retries = 0
        kms_breaker_cooldown_ms = 300

        [leasing]
        {leasing}

        [[tenants]]
        id = "{TENANT}"
        [[tenants.kms_configs]]
        id = 41
        status = "primary"
        type = "aws"
        key_id = "{key_arn}"
        endpoint_url = "{endpoint}"
        access_key_id = "test"
        secret_access_key = "test"
        "#
    );
    let path = dir.path().join("keyhold.toml");
    std::fs::write(&path, text).unwrap();
    AppState::from_config(&ProxyConfig::load(&path).unwrap()).await.unwrap()
}

fn meta() -> RequestMetadata {
    RequestMetadata::new(TENANT, "leasing-test")
}

/// The tenant's KMS calls so far, by operation, from the metrics the proxy exports.
fn kms_calls(state: &AppState) -> (u64, String) {
    let text = state.metrics.encode();
    let prefix = format!("keyhold_kms_requests_total{{tenant=\"{TENANT}\"");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    let total = lines.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum();
    (total, lines.join("\n"))
}

fn code(result: &Result<impl Sized, ServiceError>) -> Option<u16> {
    result.as_ref().err().map(|e| e.code().code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_operations_make_a_handful_of_kms_calls() {
    let Some(url) = service_env("KEYHOLD_TEST_LOCALSTACK_URL") else { return };
    let key = localstack::create_key(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let state = proxy(&url, &key, "", &dir).await;
    let service = &state.service;
    let meta = meta();

    let run = |n: usize| {
        let service = Arc::clone(service);
        let meta = meta.clone();
        async move {
            for _ in 0..n / 2 {
                let wrapped = service.wrap(&meta).await.unwrap();
                let dek = service.unwrap(&meta, &wrapped.edek).await.unwrap();
                assert_eq!(dek, wrapped.dek);
            }
        }
    };
    run(1_000).await;
    let (after_thousand, _) = kms_calls(&state);
    run(99_000).await;
    let (after_all, lines) = kms_calls(&state);
    // One lease for all of them (a renewal may fall inside the run if it is very slow).
    assert!(after_thousand <= 2, "{lines}");
    assert!(after_all <= after_thousand + 1, "the count grew with the operations:\n{lines}");
    println!("100,000 wraps+unwraps: {after_all} KMS calls\n{lines}");

    // The same without leasing: every operation is a KMS call.
    let dir = tempfile::tempdir().unwrap();
    let unleased = proxy(&url, &key, "enabled = false", &dir).await;
    for _ in 0..50 {
        let wrapped = unleased.service.wrap(&meta).await.unwrap();
        unleased.service.unwrap(&meta, &wrapped.edek).await.unwrap();
    }
    assert_eq!(kms_calls(&unleased).0, 100);
}

fn socket_addr(url: &str) -> SocketAddr {
    let host_port = url.trim_start_matches("http://").trim_end_matches('/');
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_kms_outage_leases_serve_for_the_hold_time_then_fail_closed_then_resume() {
    let Some(url) = service_env("KEYHOLD_TEST_LOCALSTACK_URL") else { return };
    let key = localstack::create_key(&url).await;
    let mut relay = Relay::start(socket_addr(&url)).await;
    let dir = tempfile::tempdir().unwrap();
    let hold = Duration::from_secs(4);
    let state = proxy(
        &format!("http://{}", relay.addr),
        &key,
        &format!("renew_interval_ms = 500\nmax_hold_ms = {}", hold.as_millis()),
        &dir,
    )
    .await;
    let service = &state.service;
    let meta = meta();
    let before = service.wrap(&meta).await.unwrap();
    // Let a renewal or two happen through the relay.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    relay.cut().await;
    let cut_at = Instant::now();
    // The KMS last answered about one interval (500 ms, plus a renewal's round trip) before the
    // cut: leases serve for at least hold - interval after it (with margin for slow machines).
    while cut_at.elapsed() < hold - Duration::from_millis(1500) {
        let wrapped = service.wrap(&meta).await.unwrap_or_else(|e| {
            panic!("refused {:?} after the cut, within the hold: {e}", cut_at.elapsed())
        });
        assert_eq!(service.unwrap(&meta, &before.edek).await.unwrap(), before.dek);
        assert_eq!(service.unwrap(&meta, &wrapped.edek).await.unwrap(), wrapped.dek);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then they fail closed with "KMS unreachable" (208).
    let refused_at = loop {
        let wrap = service.wrap(&meta).await;
        let unwrap = service.unwrap(&meta, &before.edek).await;
        if code(&wrap).is_some() && code(&unwrap).is_some() {
            assert_eq!((code(&wrap), code(&unwrap)), (Some(208), Some(208)));
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < hold + Duration::from_secs(3),
            "still serving at {:?}",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused_at <= hold + Duration::from_millis(1500), "refused only after {refused_at:?}");

    // The KMS comes back: service resumes without a restart.
    relay.restore().await;
    let restored_at = Instant::now();
    loop {
        if service.wrap(&meta).await.is_ok() {
            break;
        }
        assert!(restored_at.elapsed() < Duration::from_secs(15), "never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(service.unwrap(&meta, &before.edek).await.unwrap(), before.dek);
    println!(
        "refused {refused_at:?} after the cut; resumed {:?} after the restore",
        restored_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_disabled_in_the_kms_is_refused_within_one_renewal_interval() {
    let Some(url) = service_env("KEYHOLD_TEST_LOCALSTACK_URL") else { return };
    let key = localstack::create_key(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_secs(1);
    let state = proxy(&url, &key, "renew_interval_ms = 1000", &dir).await;
    let service = &state.service;
    let meta = meta();
    let before = service.wrap(&meta).await.unwrap();
    assert_eq!(service.unwrap(&meta, &before.edek).await.unwrap(), before.dek);

    let key_id = serde_json::to_string(&key).unwrap();
    localstack::call(&url, "DisableKey", &format!(r#"{{"KeyId":{key_id}}}"#)).await;
    let disabled_at = Instant::now();
    let refused_after = loop {
        let wrap = service.wrap(&meta).await;
        let unwrap = service.unwrap(&meta, &before.edek).await;
        if let (Some(w), Some(u)) = (code(&wrap), code(&unwrap)) {
            // AWS answers DisabledException: KMS_AUTHORIZATION_FAILED (206).
            assert_eq!((w, u), (206, 206));
            break disabled_at.elapsed();
        }
        assert!(
            disabled_at.elapsed() < 4 * interval,
            "still serving {:?} after DisableKey",
            disabled_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // One interval, plus the renewal's own round trip (with margin for slow machines).
    assert!(
        refused_after <= interval + Duration::from_millis(1500),
        "refused after {refused_after:?}"
    );

    localstack::call(&url, "EnableKey", &format!(r#"{{"KeyId":{key_id}}}"#)).await;
    let enabled_at = Instant::now();
    while service.unwrap(&meta, &before.edek).await.is_err() {
        assert!(enabled_at.elapsed() < 5 * interval, "never resumed after EnableKey");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "refused {refused_after:?} after DisableKey; resumed {:?} after EnableKey",
        enabled_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_proxy_opens_leased_edeks_with_one_kms_call_per_lease() {
    let Some(url) = service_env("KEYHOLD_TEST_LOCALSTACK_URL") else { return };
    let key = localstack::create_key(&url).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = proxy(&url, &key, "", &dir_a).await;
    let meta = meta();
    let mut wrapped = Vec::new();
    for _ in 0..200 {
        wrapped.push(a.service.wrap(&meta).await.unwrap());
    }
    let lease_ids: std::collections::HashSet<i32> = wrapped
        .iter()
        .map(|w| EncryptedDeks::from_base64(&w.edek).unwrap().encrypted_deks[0].leased_key_id)
        .collect();
    assert_eq!(lease_ids.len(), 1, "one lease sealed them all");

    // Proxy B shares nothing with A. 200 concurrent unwraps of A's EDEKs, all missing B's
    // cold cache at once, make one KMS call.
    let b = proxy(&url, &key, "", &dir_b).await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in wrapped {
        let service = Arc::clone(&b.service);
        let meta = meta.clone();
        tasks.spawn(async move {
            let dek = service.unwrap(&meta, &w.edek).await.unwrap();
            assert_eq!(dek, w.dek);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (calls, lines) = kms_calls(&b);
    assert_eq!(calls, 1, "{lines}");
    assert!(lines.contains("operation=\"lease_unwrap\"} 1"), "{lines}");
    let text = b.metrics.encode();
    assert!(
        text.contains(&format!(
            "keyhold_lease_cache_lookups_total{{tenant=\"{TENANT}\",config=\"41\",result=\"miss\"}}"
        )),
        "{text}"
    );
}

/// One derive request for `users`/`email`: the current key's secret id, or the error code.
async fn derive_users_email(state: &AppState) -> Result<u32, u16> {
    let request = keyhold_proxy::service::DeriveRequest {
        paths: [("users".to_owned(), vec!["email".to_owned()])].into(),
        derivation_type: "sha512".into(),
        secret_type: "deterministic".into(),
    };
    match state.service.derive(&meta(), &request).await {
        Ok(response) => Ok(response.keys("users", "email").unwrap()[0].tenant_secret_id),
        Err(e) => Err(e.code().code()),
    }
}

/// Tenant secrets (deterministic encryption) ride out a KMS outage for the hold time, like
/// leases, then fail closed, and resume when the KMS is back; a key disabled in the KMS is
/// refused once the secret's fresh time is over, hold or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_kms_outage_tenant_secrets_serve_for_the_hold_time_then_fail_closed() {
    let Some(url) = service_env("KEYHOLD_TEST_LOCALSTACK_URL") else { return };
    let key = localstack::create_key(&url).await;
    let mut relay = Relay::start(socket_addr(&url)).await;
    let dir = tempfile::tempdir().unwrap();
    let (fresh, hold) = (Duration::from_secs(1), Duration::from_secs(4));
    let state = proxy(
        &format!("http://{}", relay.addr),
        &key,
        &format!(
            "enabled = false\n[deterministic]\nsecret_cache_secs = {}\nsecret_hold_secs = {}",
            fresh.as_secs(),
            hold.as_secs()
        ),
        &dir,
    )
    .await;
    let id = derive_users_email(&state).await.unwrap();
    let made_at = Instant::now();

    relay.cut().await;
    // Past its fresh time the KMS cannot be asked again: the secret serves until fresh + hold
    // after the KMS last gave it (margin for the KMS timeouts of the attempts).
    while made_at.elapsed() < fresh + hold - Duration::from_millis(1500) {
        let now = derive_users_email(&state).await;
        assert_eq!(now, Ok(id), "refused {:?} after the secret was made", made_at.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused_at = loop {
        if let Err(code) = derive_users_email(&state).await {
            assert_eq!(code, 208, "KMS_UNREACHABLE");
            break made_at.elapsed();
        }
        assert!(made_at.elapsed() < fresh + hold + Duration::from_secs(3), "still serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused_at >= fresh + hold - Duration::from_millis(1500), "refused at {refused_at:?}");

    relay.restore().await;
    let restored_at = Instant::now();
    while derive_users_email(&state).await != Ok(id) {
        assert!(restored_at.elapsed() < Duration::from_secs(15), "never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A refusal is not an outage: a disabled key ends the hold at the next unwrap.
    let key_id = serde_json::to_string(&key).unwrap();
    localstack::call(&url, "DisableKey", &format!(r#"{{"KeyId":{key_id}}}"#)).await;
    let disabled_at = Instant::now();
    loop {
        match derive_users_email(&state).await {
            Err(code) => {
                assert_eq!(code, 206, "KMS_AUTHORIZATION_FAILED");
                break;
            }
            Ok(_) => {
                assert!(disabled_at.elapsed() < fresh + Duration::from_secs(3), "still serving")
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    localstack::call(&url, "EnableKey", &format!(r#"{{"KeyId":{key_id}}}"#)).await;
    println!("refused {refused_at:?} after the secret was made (fresh {fresh:?} + hold {hold:?})");
}

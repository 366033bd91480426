//! The AWS KMS backend against real servers started by `scripts/services/aws.sh`:
//! LocalStack (key states, encryption contexts, rotation; no signature checks) and moto in
//! SigV4/IAM mode (signatures, IAM policies, STS AssumeRole).
#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
use keyhold_kms::aws::{AwsConfig, AwsKms, CONTEXT_KMS_CONFIG, CONTEXT_TENANT};
use keyhold_kms::conformance::{Harness, run_all, service_env};
use keyhold_kms::{ConnectOptions, KeyContext, Kms, KmsError};

const REGION: &str = "us-east-1";

fn options() -> ConnectOptions {
    ConnectOptions { request_timeout: Duration::from_secs(10), ..ConnectOptions::default() }
}

/// A client for setting keys up, outside the backend under test.
fn admin(url: &str, region: &str, access_key: &str, secret: &str) -> Client {
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(access_key, secret, None, None, "test"))
        .build();
    Client::from_conf(conf)
}

/// LocalStack checks no signatures: any credentials do.
fn localstack() -> Option<(String, Client)> {
    let url = service_env("KEYHOLD_TEST_LOCALSTACK_URL")?;
    let client = admin(&url, REGION, "test", "test");
    Some((url, client))
}

async fn create_key(admin: &Client) -> String {
    let meta = admin.create_key().description("keyhold test").send().await.unwrap().key_metadata;
    meta.unwrap().arn.unwrap()
}

async fn connect(toml: &str) -> Result<AwsKms, KmsError> {
    let config: AwsConfig = toml::from_str(toml).unwrap();
    AwsKms::connect(&config, &options()).await
}

/// A backend for `key` (an ARN: the region comes from it) at the LocalStack `url`.
async fn backend(url: &str, key: &str) -> AwsKms {
    connect(&format!(
        "key_id = {key:?}\nendpoint_url = {url:?}\naccess_key_id = \"test\"\nsecret_access_key = \"test\""
    ))
    .await
    .unwrap()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct AwsHarness {
    admin: Client,
    key_arn: String,
    kms: Arc<AwsKms>,
    unreachable: Arc<AwsKms>,
}

impl AwsHarness {
    async fn new(url: &str, admin: Client) -> Self {
        let key_arn = create_key(&admin).await;
        let kms = Arc::new(backend(url, &key_arn).await);
        // A KMS that accepts the connection and never answers: only the timeouts end it.
        let dead = format!("http://127.0.0.1:{}", keyhold_kms::conformance::silent_port());
        let config: AwsConfig = toml::from_str(&format!(
            "key_id = {key_arn:?}\nendpoint_url = {dead:?}\naccess_key_id = \"test\"\nsecret_access_key = \"test\""
        ))
        .unwrap();
        let short = ConnectOptions { request_timeout: Duration::from_secs(2), ..options() };
        let unreachable = Arc::new(AwsKms::connect(&config, &short).await.unwrap());
        Self { admin, key_arn, kms, unreachable }
    }
}

#[async_trait]
impl Harness for AwsHarness {
    fn name(&self) -> &str {
        "aws (LocalStack)"
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        self.admin.disable_key().key_id(&self.key_arn).send().await.unwrap();
        Some(())
    }
    async fn enable_key(&self) -> Option<()> {
        self.admin.enable_key().key_id(&self.key_arn).send().await.unwrap();
        Some(())
    }
    async fn rotate_key(&self) -> Option<()> {
        self.admin.rotate_key_on_demand().key_id(&self.key_arn).send().await.unwrap();
        Some(())
    }
    fn key_version_of(&self, _wrapped: &[u8]) -> Option<u32> {
        // A KMS ciphertext names its key but not which backing key material made it.
        None
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        Some(self.unreachable.clone())
    }
}

#[tokio::test]
async fn localstack_passes_conformance() {
    let Some((url, admin)) = localstack() else { return };
    let harness = AwsHarness::new(&url, admin).await;
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&[]);
}

#[tokio::test]
async fn pending_deletion_is_key_disabled_until_cancelled() {
    let Some((url, admin)) = localstack() else { return };
    let key = create_key(&admin).await;
    let kms = backend(&url, &key).await;
    let ctx = KeyContext::new("tenant-a", 1);
    let before = kms.generate(&ctx).await.unwrap();

    admin.schedule_key_deletion().key_id(&key).pending_window_in_days(7).send().await.unwrap();
    let unwrap = kms.unwrap(&before.wrapped, &ctx).await;
    assert!(matches!(unwrap, Err(KmsError::KeyDisabled(_))), "unwrap: {unwrap:?}");
    let generate = kms.generate(&ctx).await.map(|_| ());
    assert!(matches!(generate, Err(KmsError::KeyDisabled(_))), "generate: {generate:?}");
    let health = kms.health().await;
    assert!(
        matches!(&health, Err(KmsError::KeyDisabled(m)) if m.contains("PendingDeletion")),
        "health: {health:?}"
    );

    // Cancelling leaves the key disabled; enabling it brings the old wrapped keys back.
    admin.cancel_key_deletion().key_id(&key).send().await.unwrap();
    assert!(matches!(kms.health().await, Err(KmsError::KeyDisabled(_))));
    admin.enable_key().key_id(&key).send().await.unwrap();
    kms.health().await.unwrap();
    assert_eq!(kms.unwrap(&before.wrapped, &ctx).await.unwrap(), before.dek);
}

#[tokio::test]
async fn health_follows_the_key_state() {
    let Some((url, admin)) = localstack() else { return };
    let key = create_key(&admin).await;
    let kms = backend(&url, &key).await;
    kms.health().await.unwrap();
    admin.disable_key().key_id(&key).send().await.unwrap();
    let health = kms.health().await;
    assert!(
        matches!(&health, Err(KmsError::KeyDisabled(m)) if m.contains("Disabled")),
        "{health:?}"
    );
    admin.enable_key().key_id(&key).send().await.unwrap();
    kms.health().await.unwrap();
}

#[tokio::test]
async fn a_ciphertext_with_another_encryption_context_is_refused() {
    let Some((url, admin)) = localstack() else { return };
    let key = create_key(&admin).await;
    let kms = backend(&url, &key).await;
    let ctx = KeyContext::new("tenant-a", 7);
    let dek = [7u8; 32];
    let encrypt = |context: Vec<(&str, &str)>| {
        let mut request = admin.encrypt().key_id(&key).plaintext(Blob::new(dek.as_slice()));
        for (k, v) in context {
            request = request.encryption_context(k, v);
        }
        async move { request.send().await.unwrap().ciphertext_blob.unwrap().into_inner() }
    };
    // Exactly our context, made outside the backend: it unwraps (the format is plain KMS).
    let same = encrypt(vec![(CONTEXT_TENANT, "tenant-a"), (CONTEXT_KMS_CONFIG, "7")]).await;
    assert_eq!(kms.unwrap(&same, &ctx).await.unwrap().expose_secret(), &dek);
    // No context, another tenant, one pair more: refused as invalid ciphertext.
    for context in [
        vec![],
        vec![(CONTEXT_TENANT, "tenant-b"), (CONTEXT_KMS_CONFIG, "7")],
        vec![(CONTEXT_TENANT, "tenant-a"), (CONTEXT_KMS_CONFIG, "7"), ("extra", "x")],
    ] {
        let wrapped = encrypt(context.clone()).await;
        let result = kms.unwrap(&wrapped, &ctx).await;
        assert!(
            matches!(result, Err(KmsError::InvalidCiphertext)),
            "{context:?}: {:?}",
            result.map(|_| ())
        );
    }
}

#[tokio::test]
async fn a_ciphertext_of_another_key_is_refused() {
    let Some((url, admin)) = localstack() else { return };
    let a = backend(&url, &create_key(&admin).await).await;
    let b = backend(&url, &create_key(&admin).await).await;
    let ctx = KeyContext::new("tenant-a", 1);
    let wrapped = a.generate(&ctx).await.unwrap().wrapped;
    let result = b.unwrap(&wrapped, &ctx).await;
    assert!(matches!(result, Err(KmsError::InvalidCiphertext)), "{:?}", result.map(|_| ()));
    a.unwrap(&wrapped, &ctx).await.unwrap();
}

#[tokio::test]
async fn a_nonexistent_key_is_a_configuration_error() {
    let Some((url, admin)) = localstack() else { return };
    let real = create_key(&admin).await;
    let ctx = KeyContext::new("tenant-a", 1);
    let wrapped = backend(&url, &real).await.generate(&ctx).await.unwrap().wrapped;
    let (account_and_region, _) = real.rsplit_once(":key/").unwrap();
    let missing = format!("{account_and_region}:key/00000000-0000-4000-8000-000000000000");
    let kms = backend(&url, &missing).await;
    let generate = kms.generate(&ctx).await.map(|_| ());
    assert!(matches!(generate, Err(KmsError::ConfigurationInvalid(_))), "{generate:?}");
    let wrap = kms.wrap(&keyhold_core::secret::Dek::generate().unwrap(), &ctx).await;
    assert!(matches!(wrap, Err(KmsError::ConfigurationInvalid(_))), "{wrap:?}");
    let unwrap = kms.unwrap(&wrapped, &ctx).await.map(|_| ());
    assert!(matches!(unwrap, Err(KmsError::ConfigurationInvalid(_))), "{unwrap:?}");
    let health = kms.health().await;
    assert!(matches!(health, Err(KmsError::ConfigurationInvalid(_))), "{health:?}");
    // The same for an alias that does not exist.
    let alias = connect(&format!(
        "key_id = \"alias/keyhold-missing\"\nregion = {REGION:?}\nendpoint_url = {url:?}\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\""
    ))
    .await
    .unwrap();
    let health = alias.health().await;
    assert!(matches!(health, Err(KmsError::ConfigurationInvalid(_))), "{health:?}");
}

#[tokio::test]
async fn a_key_that_cannot_encrypt_is_a_configuration_error() {
    let Some((url, admin)) = localstack() else { return };
    let signing = admin
        .create_key()
        .key_usage(KeyUsageType::SignVerify)
        .key_spec(KeySpec::EccNistP256)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    let kms = backend(&url, &signing).await;
    let health = kms.health().await;
    assert!(matches!(health, Err(KmsError::ConfigurationInvalid(_))), "{health:?}");
    let generate = kms.generate(&KeyContext::new("t", 1)).await.map(|_| ());
    assert!(matches!(generate, Err(KmsError::ConfigurationInvalid(_))), "{generate:?}");
}

#[tokio::test]
async fn aliases_and_multi_region_replicas_name_the_same_key() {
    let Some((url, admin)) = localstack() else { return };
    let ctx = KeyContext::new("tenant-a", 3);

    // An alias name (with a region) and the key ARN address one key.
    let key = create_key(&admin).await;
    let alias = format!("alias/keyhold-{}", key.rsplit_once('/').unwrap().1);
    admin.create_alias().alias_name(&alias).target_key_id(&key).send().await.unwrap();
    let by_alias = connect(&format!(
        "key_id = {alias:?}\nregion = {REGION:?}\nendpoint_url = {url:?}\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\""
    ))
    .await
    .unwrap();
    by_alias.health().await.unwrap();
    let made = by_alias.generate(&ctx).await.unwrap();
    assert_eq!(backend(&url, &key).await.unwrap(&made.wrapped, &ctx).await.unwrap(), made.dek);

    // A multi-region key: wrapped in one region, unwrapped by its replica in another.
    let primary = admin.create_key().multi_region(true).send().await.unwrap().key_metadata.unwrap();
    assert!(primary.key_id.starts_with("mrk-"), "{primary:?}");
    let primary_arn = primary.arn.unwrap();
    let replica = admin
        .replicate_key()
        .key_id(&primary_arn)
        .replica_region("eu-west-1")
        .send()
        .await
        .unwrap()
        .replica_key_metadata
        .unwrap();
    let replica_arn = replica.arn.unwrap();
    assert!(replica_arn.starts_with("arn:aws:kms:eu-west-1:"), "{replica_arn}");
    let in_replica = backend(&url, &replica_arn).await;
    // A replica is created asynchronously: wait until it is enabled.
    let eu = admin_in(&url, "eu-west-1");
    for _ in 0..100 {
        let state = eu.describe_key().key_id(&replica_arn).send().await.unwrap();
        if state.key_metadata.unwrap().key_state == Some(KeyState::Enabled) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    in_replica.health().await.unwrap();
    let made = backend(&url, &primary_arn).await.generate(&ctx).await.unwrap();
    assert_eq!(in_replica.unwrap(&made.wrapped, &ctx).await.unwrap(), made.dek);
}

fn admin_in(url: &str, region: &str) -> Client {
    admin(url, region, "test", "test")
}

/// moto checks SigV4 signatures and IAM policies (after the set-up requests the script made).
fn moto() -> Option<(String, String, String, String)> {
    let url = service_env("KEYHOLD_TEST_MOTO_URL")?;
    let id = service_env("KEYHOLD_TEST_MOTO_ACCESS_KEY_ID")?;
    let secret = service_env("KEYHOLD_TEST_MOTO_SECRET_ACCESS_KEY")?;
    let role = service_env("KEYHOLD_TEST_MOTO_ROLE_ARN")?;
    Some((url, id, secret, role))
}

async fn moto_backend(url: &str, key: &str, id: &str, secret: &str, extra: &str) -> AwsKms {
    connect(&format!(
        "key_id = {key:?}\nendpoint_url = {url:?}\naccess_key_id = {id:?}\nsecret_access_key = {secret:?}\n{extra}"
    ))
    .await
    .unwrap()
}

/// `secret` with its last character changed (to `x`, or to `y` if it already was an `x`: the
/// secret is random, and once in a while it ends in `x`).
fn wrong(secret: &str) -> String {
    let last = if secret.ends_with('x') { 'y' } else { 'x' };
    format!("{}{last}", &secret[..secret.len() - 1])
}

#[tokio::test]
async fn moto_signatures_are_checked() {
    let Some((url, id, secret, _)) = moto() else { return };
    let key = create_key(&admin(&url, REGION, &id, &secret)).await;
    let ctx = KeyContext::new("tenant-a", 1);

    let right = moto_backend(&url, &key, &id, &secret, "").await;
    let made = right.generate(&ctx).await.unwrap();
    assert_eq!(right.unwrap(&made.wrapped, &ctx).await.unwrap(), made.dek);
    right.health().await.unwrap();

    let wrong_secret = wrong(&secret);
    let wrong = moto_backend(&url, &key, &id, &wrong_secret, "").await;
    let generate = wrong.generate(&ctx).await.map(|_| ());
    // moto answers auth failures in XML, which a JSON-protocol client cannot parse: the HTTP
    // status decides.
    assert!(
        matches!(&generate, Err(KmsError::AccessDenied(m)) if m.contains("HTTP 403")),
        "{generate:?}"
    );
    let unwrap = wrong.unwrap(&made.wrapped, &ctx).await.map(|_| ());
    assert!(matches!(unwrap, Err(KmsError::AccessDenied(_))), "{unwrap:?}");
    let health = wrong.health().await;
    assert!(matches!(health, Err(KmsError::AccessDenied(_))), "{health:?}");

    let unknown = moto_backend(&url, &key, "AKIAKEYHOLDUNKNOWN00", &secret, "").await;
    let generate = unknown.generate(&ctx).await.map(|_| ());
    assert!(matches!(generate, Err(KmsError::AccessDenied(_))), "{generate:?}");
}

#[tokio::test]
async fn moto_assumed_role_credentials_work() {
    let Some((url, id, secret, role)) = moto() else { return };
    let key = create_key(&admin(&url, REGION, &id, &secret)).await;
    let ctx = KeyContext::new("tenant-a", 1);

    let kms = moto_backend(&url, &key, &id, &secret, &format!("role_arn = {role:?}")).await;
    let made = kms.generate(&ctx).await.unwrap();
    assert_eq!(kms.unwrap(&made.wrapped, &ctx).await.unwrap(), made.dek);

    // STS refuses a badly signed AssumeRole: that is a denial, not an outage.
    let wrong_secret = wrong(&secret);
    let denied =
        moto_backend(&url, &key, &id, &wrong_secret, &format!("role_arn = {role:?}")).await;
    let generate = denied.generate(&ctx).await.map(|_| ());
    assert!(matches!(generate, Err(KmsError::AccessDenied(_))), "{generate:?}");
}

#[tokio::test]
async fn sts_not_answering_is_unreachable() {
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let kms = moto_backend(
        &dead,
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "AKIAEXAMPLE",
        "secret",
        "role_arn = \"arn:aws:iam::111122223333:role/keyhold\"",
    )
    .await;
    let generate = kms.generate(&KeyContext::new("t", 1)).await.map(|_| ());
    assert!(
        matches!(&generate, Err(KmsError::Unreachable(m)) if m.contains("credentials")),
        "{generate:?}"
    );
}

/// The default credential chain (a configuration with no keys and no role): credentials from the
/// environment, then from the shared credentials file. moto checks every signature, so a call
/// that succeeds was signed with exactly the credentials the chain should have found, and one
/// signed with a wrong secret from the environment is refused. Environment variables are the
/// process's, so each case runs this test binary again as a child with its own environment.
#[tokio::test]
async fn default_chain_credentials_from_the_environment_and_the_shared_file() {
    let Some((url, id, secret, _)) = moto() else { return };
    let key = create_key(&admin(&url, REGION, &id, &secret)).await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("credentials");
    std::fs::write(
        &shared,
        format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let missing = dir.path().join("no-such-file");
    let cases: [(&str, Vec<(&str, String)>); 3] = [
        ("ok", vec![("AWS_ACCESS_KEY_ID", id.clone()), ("AWS_SECRET_ACCESS_KEY", secret.clone())]),
        (
            "denied",
            vec![("AWS_ACCESS_KEY_ID", id.clone()), ("AWS_SECRET_ACCESS_KEY", wrong(&secret))],
        ),
        ("ok", vec![("AWS_SHARED_CREDENTIALS_FILE", shared.display().to_string())]),
    ];
    for (expect, env) in cases {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "default_chain_child", "--ignored", "--nocapture"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            // No instance metadata service to wait for if the chain got that far.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", &missing)
            .env("AWS_SHARED_CREDENTIALS_FILE", &missing)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("KEYHOLD_CHILD_URL", &url)
            .env("KEYHOLD_CHILD_KEY", &key)
            .env("KEYHOLD_CHILD_EXPECT", expect)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "case {expect} {:?}: {text}",
            env.iter().map(|e| e.0).collect::<Vec<_>>()
        );
        assert!(text.contains("default chain: checked"), "the child test did not run: {text}");
    }
}

#[tokio::test]
#[ignore = "run as a child process by default_chain_credentials_from_the_environment_and_the_shared_file"]
async fn default_chain_child() {
    let (Ok(url), Ok(key), Ok(expect)) = (
        std::env::var("KEYHOLD_CHILD_URL"),
        std::env::var("KEYHOLD_CHILD_KEY"),
        std::env::var("KEYHOLD_CHILD_EXPECT"),
    ) else {
        return;
    };
    // No access_key_id, secret_access_key or role_arn: the SDK's default chain.
    let kms = connect(&format!("key_id = {key:?}\nendpoint_url = {url:?}")).await.unwrap();
    let ctx = KeyContext::new("tenant-a", 1);
    let result = kms.generate(&ctx).await;
    match expect.as_str() {
        "ok" => {
            let made = result.unwrap();
            assert_eq!(kms.unwrap(&made.wrapped, &ctx).await.unwrap(), made.dek);
        }
        _ => assert!(matches!(result, Err(KmsError::AccessDenied(_))), "{:?}", result.map(|_| ())),
    }
    println!("default chain: checked ({expect})");
}

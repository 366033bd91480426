//! The local keystore backend passes the KMS conformance suite.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use keyhold_core::secret::RootKey;
use keyhold_kms::Kms;
use keyhold_kms::conformance::{Harness, run_all};
use keyhold_kms::local::{Keystore, LocalKms};

struct LocalHarness {
    _dir: tempfile::TempDir,
    root: RootKey,
    keystore: Arc<Keystore>,
    kms: Arc<LocalKms>,
}

impl LocalHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = RootKey::generate().unwrap();
        let keystore =
            Arc::new(Keystore::create(dir.path().join("keystore"), root.clone()).unwrap());
        keystore.create_key("conformance").unwrap();
        let kms = Arc::new(LocalKms::new(Arc::clone(&keystore), "conformance"));
        Self { _dir: dir, root, keystore, kms }
    }
}

#[async_trait]
impl Harness for LocalHarness {
    fn name(&self) -> &str {
        "local"
    }
    fn kms(&self) -> Arc<dyn Kms> {
        self.kms.clone()
    }
    async fn disable_key(&self) -> Option<()> {
        self.keystore.set_enabled("conformance", false).unwrap();
        Some(())
    }
    async fn enable_key(&self) -> Option<()> {
        self.keystore.set_enabled("conformance", true).unwrap();
        Some(())
    }
    async fn rotate_key(&self) -> Option<()> {
        self.keystore.rotate_key("conformance").unwrap();
        Some(())
    }
    fn key_version_of(&self, wrapped: &[u8]) -> Option<u32> {
        LocalKms::key_version_of(wrapped)
    }
    fn unreachable_kms(&self) -> Option<Arc<dyn Kms>> {
        // A local keystore is in-process: there is nothing to be unreachable.
        None
    }
}

#[tokio::test]
async fn local_backend_passes_conformance() {
    let harness = LocalHarness::new();
    let report = run_all(&harness).await;
    report.assert_all_passed_except(&["unreachable_is_reported"]);
}

#[tokio::test]
async fn a_second_process_disabling_the_key_takes_effect() {
    let harness = LocalHarness::new();
    let ctx = keyhold_kms::KeyContext::new("t", 1);
    let wrapped = harness.kms.generate(&ctx).await.unwrap().wrapped;
    // Another handle on the same file, as `keyhold keys disable` in another process would be.
    let other = Keystore::open(harness.keystore.path(), harness.root.clone()).unwrap();

    // With a long check interval the change is not seen yet...
    harness.keystore.set_check_interval(std::time::Duration::from_secs(3600));
    harness.kms.unwrap(&wrapped, &ctx).await.unwrap();
    other.set_enabled("conformance", false).unwrap();
    assert!(harness.kms.unwrap(&wrapped, &ctx).await.is_ok(), "checked before the interval passed");

    // ...with the default (check on every use) it is, at once, both ways.
    harness.keystore.set_check_interval(keyhold_kms::local::DEFAULT_CHECK_INTERVAL);
    assert!(harness.kms.unwrap(&wrapped, &ctx).await.unwrap_err().is_revocation());
    other.set_enabled("conformance", true).unwrap();
    assert!(harness.kms.unwrap(&wrapped, &ctx).await.is_ok());
    other.rotate_key("conformance").unwrap();
    let rewrapped = harness.kms.generate(&ctx).await.unwrap().wrapped;
    assert_eq!(LocalKms::key_version_of(&rewrapped), Some(2));
}

//! SDK → proxy (real socket, ephemeral port) → local KMS, end to end.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use keyhold::{Client, Document, EncryptedDocument, Error, ErrorCode, RequestMetadata};
use keyhold_proxy::{Proxy, ProxyConfig, bootstrap};
use proptest::prelude::*;

struct RunningProxy {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    addr: SocketAddr,
    api_key: String,
}

impl RunningProxy {
    /// Starts a proxy with tenants `tenant-a` and `tenant-b` on the current runtime.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data =
            bootstrap::init_data_dir(dir.path(), &["tenant-a", "tenant-b"], "127.0.0.1:0").unwrap();
        let config = ProxyConfig::load(&data.config_path).unwrap();
        let proxy = Proxy::bind(&config).await.unwrap();
        let addr = proxy.local_addr().unwrap();
        tokio::spawn(proxy.run(std::future::pending()));
        let api_key = std::fs::read_to_string(&data.api_key_path).unwrap().trim().to_owned();
        Self { dir: dir.path().to_owned(), _dir: dir, addr, api_key }
    }

    fn client(&self) -> Client {
        Client::new(format!("http://{}", self.addr), &self.api_key).unwrap()
    }

    fn keystore(&self) -> keyhold_kms::local::Keystore {
        let root = keyhold_kms::local::load_root_key(Some(&self.dir.join("root.key"))).unwrap();
        keyhold_kms::local::Keystore::open(self.dir.join("keystore"), root).unwrap()
    }
}

fn meta(tenant: &str) -> RequestMetadata {
    RequestMetadata::new(tenant, "sdk-test").with_data_label("PII").with_object_id("obj-1")
}

fn doc(fields: &[(&str, &[u8])]) -> Document {
    fields.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect()
}

/// One proxy on its own runtime thread, shared by the property test's cases.
fn shared() -> &'static (RunningProxy, tokio::runtime::Runtime) {
    static SHARED: OnceLock<(RunningProxy, tokio::runtime::Runtime)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let proxy = server_rt.block_on(RunningProxy::start());
        std::thread::spawn(move || server_rt.block_on(std::future::pending::<()>()));
        let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        (proxy, client_rt)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_documents_round_trip(
        fields in proptest::collection::btree_map(".{0,24}", proptest::collection::vec(any::<u8>(), 0..4096), 1..6),
        tenant in prop_oneof![Just("tenant-a"), Just("tenant-b")],
    ) {
        let (proxy, rt) = shared();
        let client = proxy.client();
        let meta = meta(tenant);
        let encrypted = rt.block_on(client.encrypt(&fields, &meta)).unwrap();
        prop_assert_eq!(encrypted.fields.len(), fields.len());
        for (name, value) in &encrypted.fields {
            prop_assert!(value.as_slice() != fields[name].as_slice() || fields[name].is_empty() && value.len() > 16);
        }
        let decrypted = rt.block_on(client.decrypt(&encrypted, &meta)).unwrap();
        prop_assert_eq!(decrypted, fields);
    }
}

#[tokio::test]
async fn tenant_isolation_through_the_sdk() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let encrypted = client.encrypt(&doc(&[("ssn", b"123")]), &meta("tenant-a")).await.unwrap();

    // The fields say they belong to tenant-a: refused before any proxy call.
    let err = client.decrypt(&encrypted, &meta("tenant-b")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidEncryptedDocument, "{err}");

    // The proxy itself refuses tenant-a's EDEK for tenant-b.
    let err = client.unwrap_key(&encrypted.edek, &meta("tenant-b")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidProvidedEdek, "{err}");

    // Fields re-encrypted for tenant-b under a key from tenant-a's EDEK cannot be paired either.
    let other = client.encrypt(&doc(&[("ssn", b"456")]), &meta("tenant-b")).await.unwrap();
    let mixed = EncryptedDocument { edek: encrypted.edek.clone(), fields: other.fields };
    let err = client.decrypt(&mixed, &meta("tenant-b")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidProvidedEdek, "{err}");
}

#[tokio::test]
async fn tampering_is_detected_with_the_right_codes() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    let encrypted = client.encrypt(&doc(&[("a", b"alpha"), ("b", b"beta")]), &meta).await.unwrap();

    // Body bit flip → decrypt failed (902).
    let mut body = encrypted.clone();
    let field = body.fields.get_mut("a").unwrap();
    let last = field.len() - 1;
    field[last] ^= 1;
    assert_eq!(
        client.decrypt(&body, &meta).await.unwrap_err().code(),
        ErrorCode::DocumentDecryptFailed
    );

    // Header byte (inside the tenant id) altered → the tenant no longer matches (900).
    let mut header = encrypted.clone();
    header.fields.get_mut("a").unwrap()[8] ^= 1;
    assert_eq!(
        client.decrypt(&header, &meta).await.unwrap_err().code(),
        ErrorCode::InvalidEncryptedDocument
    );

    // Commitment altered → decrypt failed (902).
    let mut commitment = encrypted.clone();
    commitment.fields.get_mut("a").unwrap()[20] ^= 1;
    assert_eq!(
        client.decrypt(&commitment, &meta).await.unwrap_err().code(),
        ErrorCode::DocumentDecryptFailed
    );

    // Truncated field → invalid document (900).
    let mut short = encrypted.clone();
    short.fields.get_mut("b").unwrap().truncate(10);
    assert_eq!(
        client.decrypt(&short, &meta).await.unwrap_err().code(),
        ErrorCode::InvalidEncryptedDocument
    );

    // Fields swapped between names → decrypt failed (names are bound).
    let mut swapped = encrypted.clone();
    let a = swapped.fields["a"].clone();
    let b = swapped.fields["b"].clone();
    swapped.fields.insert("a".into(), b);
    swapped.fields.insert("b".into(), a);
    assert_eq!(
        client.decrypt(&swapped, &meta).await.unwrap_err().code(),
        ErrorCode::DocumentDecryptFailed
    );

    // EDEK altered → the proxy refuses it (203).
    let mut edek_bytes = encrypted.edek.to_bytes().unwrap();
    let last = edek_bytes.len() - 1;
    edek_bytes[last] ^= 0x10;
    let bad_edek =
        EncryptedDocument { edek: keyhold::Edek::from_bytes(&edek_bytes), ..encrypted.clone() };
    assert_eq!(
        client.decrypt(&bad_edek, &meta).await.unwrap_err().code(),
        ErrorCode::InvalidProvidedEdek
    );

    // The untouched document still decrypts.
    assert_eq!(client.decrypt(&encrypted, &meta).await.unwrap()["b"], b"beta");
}

#[tokio::test]
async fn ironcore_v3_fields_are_written_and_read() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    let document = doc(&[("ssn", b"123-45-6789"), ("empty", b"")]);
    let v3 = client
        .encrypt_with_format(&document, &meta, keyhold::FieldFormat::IronCoreV3)
        .await
        .unwrap();
    for value in v3.fields.values() {
        assert_eq!(&value[..5], b"\x03IRON");
    }
    assert_eq!(client.decrypt(&v3, &meta).await.unwrap(), document);
    // A document mixing both layouts under one EDEK (e.g. half-migrated) also reads.
    let keyhold_fields =
        client.encrypt_with_existing_edek(&doc(&[("new", b"n")]), &v3.edek, &meta).await.unwrap();
    let mut mixed = v3.clone();
    mixed.fields.extend(keyhold_fields.fields);
    assert_eq!(client.decrypt(&mixed, &meta).await.unwrap().len(), 3);
    // Tenant checks apply to v3 headers too.
    let err = client.decrypt(&v3, &meta_for_b()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidEncryptedDocument);
    // A flipped body bit fails authentication.
    let mut bad = v3.clone();
    let f = bad.fields.get_mut("ssn").unwrap();
    let last = f.len() - 1;
    f[last] ^= 1;
    assert_eq!(
        client.decrypt(&bad, &meta).await.unwrap_err().code(),
        ErrorCode::DocumentDecryptFailed
    );
}

fn meta_for_b() -> RequestMetadata {
    meta("tenant-b")
}

#[tokio::test]
async fn batches_take_one_call_and_report_per_document() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-a");
    let documents: HashMap<String, Document> =
        (0..50).map(|i| (format!("doc-{i}"), doc(&[("n", i.to_string().as_bytes())]))).collect();
    let encrypted = client.encrypt_batch(&documents, &meta).await.unwrap();
    assert_eq!(encrypted.successes.len(), 50);
    assert!(encrypted.failures.is_empty());

    let mut to_decrypt = encrypted.successes.clone();
    to_decrypt.get_mut("doc-7").unwrap().fields.get_mut("n").unwrap()[60] ^= 1;
    let mut foreign = client.encrypt(&doc(&[("n", b"x")]), &meta).await.unwrap();
    foreign.edek = keyhold::Edek::from("not-an-edek".to_owned());
    to_decrypt.insert("broken-edek".into(), foreign);
    let decrypted = client.decrypt_batch(&to_decrypt, &meta).await.unwrap();
    assert_eq!(decrypted.successes.len(), 49);
    assert_eq!(decrypted.failures["doc-7"].code(), ErrorCode::DocumentDecryptFailed);
    assert_eq!(decrypted.failures["broken-edek"].code(), ErrorCode::InvalidProvidedEdek);
    assert_eq!(decrypted.successes["doc-3"]["n"], b"3");

    let metrics =
        reqwest::get(format!("http://{}/metrics", proxy.addr)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"keyhold_http_requests_total{route="/api/1/document/batch-wrap",status="200"} 1"#
        ),
        "{metrics}"
    );
    // The 51 decrypts were one batch-unwrap call, and no single unwrap.
    assert!(
        metrics.contains(
            r#"keyhold_http_requests_total{route="/api/1/document/batch-unwrap",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"route="/api/1/document/unwrap""#), "{metrics}");
}

#[tokio::test]
async fn existing_edek_rekey_and_revocation() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta_a = meta("tenant-a");
    let v1 = client.encrypt(&doc(&[("f", b"v1")]), &meta_a).await.unwrap();
    let v2 =
        client.encrypt_with_existing_edek(&doc(&[("f", b"v2")]), &v1.edek, &meta_a).await.unwrap();
    assert_eq!(v2.edek, v1.edek);
    assert_eq!(client.decrypt(&v2, &meta_a).await.unwrap()["f"], b"v2");

    // Rekey to the same tenant after its key rotated: the data is untouched and still decrypts.
    proxy.keystore().rotate_key("tenant-a").unwrap();
    let rekeyed = client.rekey_edek(&v1.edek, "tenant-a", &meta_a).await.unwrap();
    assert_ne!(rekeyed, v1.edek);
    let same_data = EncryptedDocument { edek: rekeyed.clone(), fields: v1.fields.clone() };
    // The running proxy picks up the rotation on its reload tick; either version unwraps.
    assert_eq!(client.decrypt(&same_data, &meta_a).await.unwrap()["f"], b"v1");

    // The tenant disables its key: decryption is refused with 206 once the proxy reloads.
    proxy.keystore().set_enabled("tenant-a", false).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let err = loop {
        match client.decrypt(&v1, &meta_a).await {
            Err(e) => break e,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Ok(_) => panic!("decryption still allowed after the key was disabled"),
        }
    };
    assert_eq!(err.code(), ErrorCode::KmsAuthorizationFailed, "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn files_and_streams() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta = meta("tenant-b");
    let dir = tempfile::tempdir().unwrap();
    let plain: Vec<u8> =
        (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let (input, encrypted, output) =
        (dir.path().join("in"), dir.path().join("in.khf"), dir.path().join("out"));
    std::fs::write(&input, &plain).unwrap();

    let edek = client.encrypt_file(&input, &encrypted, &meta).await.unwrap();
    let info = keyhold::read_stream_info(&encrypted).await.unwrap();
    assert_eq!((info.tenant_id.as_str(), &info.edek), ("tenant-b", &edek));
    let ciphertext = std::fs::read(&encrypted).unwrap();
    assert!(!ciphertext.windows(64).any(|w| w == &plain[1000..1064]));

    client.decrypt_file(&encrypted, &output, &meta).await.unwrap();
    assert_eq!(std::fs::read(&output).unwrap(), plain);

    // Truncated: an error, and no output file appears.
    let truncated = dir.path().join("truncated.khf");
    std::fs::write(&truncated, &ciphertext[..ciphertext.len() - 100]).unwrap();
    let target = dir.path().join("never");
    let err = client.decrypt_file(&truncated, &target, &meta).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DocumentDecryptFailed, "{err}");
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        4,
        "a temporary file was left behind"
    );

    // Wrong tenant.
    let err = client
        .decrypt_file(&encrypted, &target, &RequestMetadata::new("tenant-a", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidEncryptedDocument);

    // In-memory streams.
    let mut sealed = Vec::new();
    client.encrypt_stream(&b"streamed"[..], &mut sealed, &meta).await.unwrap();
    let mut opened = Vec::new();
    client.decrypt_stream(sealed.as_slice(), &mut opened, &meta).await.unwrap();
    assert_eq!(opened, b"streamed");
}

#[tokio::test]
async fn connection_and_auth_errors() {
    let proxy = RunningProxy::start().await;
    let wrong = Client::new(format!("http://{}", proxy.addr), "not-the-key-0123456789").unwrap();
    let err = wrong.encrypt(&doc(&[("f", b"x")]), &meta("tenant-a")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnauthorizedRequest);
    assert!(matches!(err, Error::Proxy { status: 401, .. }));

    // Nothing listens on port 9 of localhost (discard service is not installed here).
    let nowhere = keyhold::ClientBuilder::new("http://127.0.0.1:9", "any-key-0123456789")
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let err = nowhere.encrypt(&doc(&[("f", b"x")]), &meta("tenant-a")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnableToMakeRequest, "{err}");
    assert!(err.is_retryable());

    let client = proxy.client();
    let err = client.encrypt(&doc(&[("f", b"x")]), &meta("unknown")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownTenantOrNoActiveKmsConfigurations);
    let err = client
        .encrypt(&doc(&[("f", b"x")]), &RequestMetadata::new("tenant-a", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(Client::new("ftp://x", "k").is_err());

    client.log_security_event("USER_LOGIN", Some(1), &meta("tenant-a")).await.unwrap();
}

#[tokio::test]
async fn rekey_edeks_in_one_call_with_per_id_results() {
    let proxy = RunningProxy::start().await;
    let client = proxy.client();
    let meta_a = meta("tenant-a");
    let docs: Vec<EncryptedDocument> = encrypt_three(&client, &meta_a).await;
    let foreign = client.encrypt(&doc(&[("f", b"b")]), &meta("tenant-b")).await.unwrap();
    let mut edeks: HashMap<String, keyhold::Edek> =
        docs.iter().enumerate().map(|(i, d)| (format!("d{i}"), d.edek.clone())).collect();
    edeks.insert("foreign".into(), foreign.edek.clone());
    edeks.insert("junk".into(), keyhold::Edek::from("AAAA".to_owned()));

    let result = client.rekey_edeks(edeks, "tenant-a", &meta_a).await.unwrap();
    assert_eq!((result.successes.len(), result.failures.len()), (3, 2));
    assert_eq!(result.failures["foreign"].code(), ErrorCode::InvalidProvidedEdek);
    assert_eq!(result.failures["junk"].code(), ErrorCode::InvalidProvidedEdek);
    for (i, d) in docs.iter().enumerate() {
        let new = &result.successes[&format!("d{i}")];
        assert_ne!(new, &d.edek);
        let moved = EncryptedDocument { edek: new.clone(), fields: d.fields.clone() };
        assert_eq!(client.decrypt(&moved, &meta_a).await.unwrap()["f"], i.to_string().as_bytes());
    }

    // A move into another tenant is refused as a whole, with its own code.
    let one = HashMap::from([("x".to_owned(), docs[0].edek.clone())]);
    let err = client.rekey_edeks(one, "tenant-b", &meta_a).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::RekeyTargetNotAllowed, "{err}");
    assert!(matches!(err, Error::Proxy { status: 403, .. }), "{err:?}");
    assert!(!err.is_retryable());
}

async fn encrypt_three(client: &Client, meta: &RequestMetadata) -> Vec<EncryptedDocument> {
    let mut docs = Vec::new();
    for i in 0..3 {
        docs.push(client.encrypt(&doc(&[("f", i.to_string().as_bytes())]), meta).await.unwrap());
    }
    docs
}

/// A TCP relay in front of the proxy that counts the connections it accepts.
async fn counting_relay(
    target: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let proxy = RunningProxy::start().await;
    let (relay, accepted) = counting_relay(proxy.addr).await;
    let client = Client::new(format!("http://{relay}"), &proxy.api_key).unwrap();
    let meta = meta("tenant-a");
    for _ in 0..20 {
        let encrypted = client.encrypt(&doc(&[("f", b"x")]), &meta).await.unwrap();
        client.decrypt(&encrypted, &meta).await.unwrap();
    }
    // Clones share the pool too.
    let clone = client.clone();
    clone.encrypt(&doc(&[("f", b"y")]), &meta).await.unwrap();
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "41 calls, one connection");
}

#[tokio::test]
async fn a_proxy_that_never_answers_fails_within_the_whole_call_timeout() {
    // Accepts connections and reads, but never answers: only the whole-call timeout ends it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = keyhold::ClientBuilder::new(format!("http://{addr}"), "any-key-0123456789")
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.encrypt(&doc(&[("f", b"x")]), &meta("tenant-a")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::UnableToMakeRequest, "{err}");
    assert!(err.is_retryable());
    assert!(took >= std::time::Duration::from_millis(300), "ended before the timeout: {took:?}");
    assert!(took < std::time::Duration::from_secs(5), "the timeout did not end the call: {took:?}");
}

//! Writes small, valid seed inputs for every fuzz target into `fuzz/corpus/<target>/`, and the
//! keystore fixture `fuzz/fixtures/local-keystore.khk` that `local_kms_unwrap` opens.
//!
//! Salts and IVs are random, so every run writes different bytes; the corpora and the fixture
//! must be regenerated together (the local KMS seeds only open with the fixture of the same run).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyhold_core::Dek;
use keyhold_core::deterministic::{derive_field_key, encrypt as encrypt_deterministic};
use keyhold_core::document::DocumentKey;
use keyhold_core::edek::{EncryptedDek, EncryptedDeks};
use keyhold_core::ironcore::encrypt_v3;
use keyhold_core::secret::{DerivedFieldKey, RootKey, TenantSecret};
use keyhold_core::stream::{DEFAULT_SEGMENT_SIZE, encrypt_all};
use keyhold_kms::local::{Keystore, LocalKms};
use keyhold_kms::{KeyContext, Kms};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fuzz_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

fn hex(text: &str) -> Vec<u8> {
    let s: String = text.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn vector(name: &str) -> Result<Vec<u8>> {
    let path = fuzz_dir().join("../crates/keyhold-core/tests/vectors").join(name);
    Ok(hex(&fs::read_to_string(path)?))
}

struct Corpus(PathBuf);

impl Corpus {
    fn new(target: &str) -> Result<Self> {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir)?;
        // Replace the generated seeds; keep regression inputs (`regress-*`) added by hand.
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().starts_with("regress-") {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(Self(dir))
    }

    fn put(&self, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
        fs::write(self.0.join(name), bytes)?;
        Ok(())
    }
}

fn local_edek() -> EncryptedDeks {
    let mut khl = b"KHL\x01\x00\x00\x00\x01".to_vec();
    khl.resize(88, 0x5c);
    EncryptedDeks::single(EncryptedDek {
        encrypted_dek_data: khl,
        kms_config_id: 1,
        tenant_id: "demo-tenant".into(),
        ..Default::default()
    })
}

fn document_field() -> Result<()> {
    let c = Corpus::new("document_field")?;
    let kat = vector("document-v1-kat.hex")?;
    let key = DocumentKey::new(&Dek::from_bytes([0x42; 32]), "tenant-kat")?;
    c.put("kat", &kat)?;
    c.put("empty-plaintext", key.encrypt_field("field", b"")?)?;
    c.put("100-bytes", key.encrypt_field("field", &[b'x'; 100])?)?;
    c.put("other-field-name", key.encrypt_field("ssn", b"123-45-6789")?)?;
    let other = DocumentKey::new(&Dek::from_bytes([0x42; 32]), "other-tenant")?;
    c.put("other-tenant", other.encrypt_field("field", b"hello")?)?;
    c.put("truncated-header", &kat[..20])?;
    Ok(())
}

fn edek() -> Result<()> {
    let c = Corpus::new("edek")?;
    let local = local_edek();
    c.put("local-one-entry", local.to_bytes())?;
    c.put("local-one-entry.b64", local.to_base64())?;
    c.put(
        "small",
        EncryptedDeks::single(EncryptedDek {
            encrypted_dek_data: vec![1, 2, 3],
            kms_config_id: 7,
            tenant_id: "tenant-a".into(),
            ..Default::default()
        })
        .to_bytes(),
    )?;
    let mut two = local.clone();
    two.encrypted_deks.push(EncryptedDek {
        encrypted_dek_data: b"second-kms-ciphertext".to_vec(),
        kms_config_id: 42,
        ..Default::default()
    });
    c.put("two-entries", two.to_bytes())?;
    let leased = EncryptedDeks::single(EncryptedDek {
        encrypted_dek_data: vec![9; 40],
        kms_config_id: 3,
        leased_key_id: 5,
        leased_key_iv: vec![1; 12],
        encrypted_leased_key_data: local.to_bytes(),
        tenant_id: "tenant-b".into(),
    });
    // Inconsistent leasing fields (a 40-byte sealed key, a nested envelope of another tenant and
    // configuration): refused.
    c.put("leased", leased.to_bytes())?;
    // A well-formed leased entry, as the proxy writes it (docs/formats.md §8).
    let sealed = keyhold_core::lease::SealedDek { iv: [1; 12], sealed: [9; 48] };
    let valid = EncryptedDeks::single(EncryptedDek::new_leased(
        "tenant-b",
        3,
        5,
        &sealed,
        b"kms-ciphertext-of-the-lease-key",
    ));
    c.put("leased-valid", valid.to_bytes())?;
    c.put("leased-valid.b64", valid.to_base64())?;
    // kmsConfigId = -1 as a 5-byte varint (proto3 writers use 10 bytes for negative int32).
    c.put("negative-config-id-short-varint", hex("0a 0b 0a 03 010203 10 ffffffff0f"))?;
    c.put("no-entries", [0x12, 0x00])?;
    Ok(())
}

fn stream() -> Result<()> {
    let c = Corpus::new("stream")?;
    let dek = Dek::from_bytes([0x42; 32]);
    let edek = local_edek().to_bytes();
    let small_edek = b"edek";
    c.put("empty", encrypt_all(&dek, "tenant-kat", small_edek, 16, b"")?)?;
    c.put("one-segment", encrypt_all(&dek, "tenant-kat", small_edek, 16, b"hello")?)?;
    c.put("exactly-two-segments", encrypt_all(&dek, "tenant-kat", small_edek, 16, &[7; 32])?)?;
    c.put("three-segments", encrypt_all(&dek, "tenant-kat", small_edek, 17, &[1; 40])?)?;
    c.put(
        "default-segment-real-edek",
        encrypt_all(&dek, "demo-tenant", &edek, DEFAULT_SEGMENT_SIZE, &[0xab; 100])?,
    )?;
    let other = encrypt_all(&Dek::from_bytes([1; 32]), "tenant-kat", small_edek, 16, b"abc")?;
    c.put("other-dek", other)?;
    Ok(())
}

fn ironcore_v3() -> Result<()> {
    let c = Corpus::new("ironcore_v3")?;
    c.put("kat1-php-client", vector("ironcore-v3-kat1.hex")?)?;
    let kat7 = vector("ironcore-v3-kat7.hex")?;
    c.put("kat7", &kat7)?;
    c.put(
        "kat3-zero-header",
        hex("0349524f4e0000346145efbf2055ba656dbd1fe4daedb22a7d7cd1501f0a7f93ec5a07586867c0c8265f609fa4ca"),
    )?;
    let dek: Dek = Dek::from_bytes(core::array::from_fn(|i| i as u8));
    let mut empty_sig = hex("0349524f4e000e0a001a0a0a0874656e616e744964");
    empty_sig.extend_from_slice(&kat7[7 + 42..]);
    c.put("empty-sig", empty_sig)?;
    c.put("empty-plaintext", encrypt_v3(&dek, "tenantId", b"")?)?;
    let mut data_control = hex("0349524f4e0006120408011001");
    data_control.extend_from_slice(&[0; 28]);
    c.put("data-control-header", data_control)?;
    Ok(())
}

/// Deterministic fields under the target's two keys: `42`×64 (secret 7) and IronCore's published
/// derived key (secret 5111, whose published field is one seed).
fn deterministic_field() -> Result<()> {
    let c = Corpus::new("deterministic_field")?;
    let fixed = DerivedFieldKey::from_bytes([0x42; 64]);
    c.put("valid", encrypt_deterministic(&fixed, 7, b"alice@example.com")?)?;
    c.put("empty-plaintext", encrypt_deterministic(&fixed, 7, b"")?)?;
    let secret = TenantSecret::from_base64("ScbKs2h0XSaBQ/vXp04RmChAffLjh2nxBgRT95j21FM=")?;
    let ironcore = derive_field_key(&secret, "tenant-gcp", "derivPath");
    // IronCore's field `AAAT9wAAeFKwSikcVVSXpGj8z2/7bYkDpEue9kUlUxOj` ("Jim Bridger"), as is.
    let published = hex("000013f7 0000 7852b04a291c555497a468fccf6ffb6d 8903a44b9ef645255313a3");
    assert_eq!(encrypt_deterministic(&ironcore, 5111, b"Jim Bridger")?, published);
    c.put("ironcore-published", published)?;
    c.put("unknown-secret", encrypt_deterministic(&fixed, 8, b"x")?)?;
    c.put("short", hex("00000007 0000 0102030405"))?;
    Ok(())
}

fn wire_json() -> Result<()> {
    let c = Corpus::new("wire_json")?;
    let edek = local_edek().to_base64();
    let meta = r#""tenantId":"demo-tenant","iclFields":{"requestingId":"user-42","dataLabel":"PII","sourceIp":"203.0.113.9","objectId":"doc-1","requestId":"req-1"},"customFields":{"org":"sales"}"#;
    c.put("wrap", format!("{{{meta}}}"))?;
    c.put("unwrap", format!(r#"{{{meta},"encryptedDocumentKey":"{edek}"}}"#))?;
    c.put("batch-wrap", format!(r#"{{{meta},"documentIds":["a","b"]}}"#))?;
    c.put(
        "batch-unwrap-nulls",
        format!(
            r#"{{"tenantId":"t","iclFields":{{"requestingId":"u","objectId":null}},"customFields":null,"edeks":{{"doc1":"{edek}","doc2":"AAAA"}}}}"#
        ),
    )?;
    c.put(
        "rekey",
        format!(r#"{{{meta},"encryptedDocumentKey":"{edek}","newTenantId":"tenant-2"}}"#),
    )?;
    c.put(
        "security-event",
        r#"{"tenantId":"t","timestampMillis":1718000000000,"event":"USER_LOGIN","iclFields":{"requestingId":"u","event":"USER_LOGIN"},"customFields":{"loginMethod":"sso"}}"#,
    )?;
    c.put(
        "report-operations",
        format!(r#"{{{meta},"operations":{{"{edek}":{{"wraps":12,"unwraps":3}}}}}}"#),
    )?;
    let dek = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    c.put("wrapped-key", format!(r#"{{"dek":"{dek}","edek":"{edek}"}}"#))?;
    c.put(
        "batch-responses",
        format!(
            r#"{{"keys":{{"doc1":{{"dek":"{dek}","edek":"{edek}"}}}},"failures":{{"doc2":{{"code":203,"message":"Provided EDEK was not valid."}}}}}}"#
        ),
    )?;
    c.put("error", r#"{"code":206,"message":"the master key is disabled"}"#)?;
    Ok(())
}

fn local_kms() -> Result<()> {
    let c = Corpus::new("local_kms_unwrap")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keystore");
    let keystore = Arc::new(Keystore::create(&path, RootKey::from_bytes([0x11; 32]))?);
    keystore.create_key("fuzz-key")?;
    keystore.create_key("disabled-key")?;
    let key = LocalKms::new(Arc::clone(&keystore), "fuzz-key");
    let disabled = LocalKms::new(Arc::clone(&keystore), "disabled-key");
    let ctx = KeyContext::new("fuzz-tenant", 1);
    let dek = Dek::from_bytes([0x42; 32]);
    c.put("version-1", pollster::block_on(key.wrap(&dek, &ctx))?)?;
    keystore.rotate_key("fuzz-key")?;
    c.put("version-2", pollster::block_on(key.wrap(&dek, &ctx))?)?;
    let other = KeyContext::new("other-tenant", 1);
    c.put("other-context", pollster::block_on(key.wrap(&dek, &other))?)?;
    c.put("disabled-key", pollster::block_on(disabled.wrap(&dek, &ctx))?)?;
    keystore.set_enabled("disabled-key", false)?;
    let mut unknown_version = pollster::block_on(key.wrap(&dek, &ctx))?;
    unknown_version[4..8].copy_from_slice(&3u32.to_be_bytes());
    c.put("unknown-version", unknown_version)?;
    c.put("magic-only", b"KHL\x01")?;
    let fixtures = fuzz_dir().join("fixtures");
    fs::create_dir_all(&fixtures)?;
    fs::copy(&path, fixtures.join("local-keystore.khk"))?;
    Ok(())
}

fn main() -> Result<()> {
    document_field()?;
    edek()?;
    stream()?;
    ironcore_v3()?;
    deterministic_field()?;
    wire_json()?;
    local_kms()?;
    println!("seeds written under {}", fuzz_dir().join("corpus").display());
    Ok(())
}

//! KAT-6 (docs/tsp-api.md §9): an EDEK and a v3 document that IronCore's own proxy and Node client
//! made in their integration tests (tenant `INTEGRATION-TEST-GCP`, a leased GCP configuration).
//! The DEK is not published, so these check that Keyhold reads IronCore's bytes field for field.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use keyhold_core::edek::EncryptedDeks;
use keyhold_core::ironcore::parse_v3;

const IRONCORE_LEASED_GCP_EDEK: &str = "CsABCjCNEF2vxOsHAjFQservCufgFU7sdqrvy972uZvxB/FAyrH0nQrMIN3Cwvp4NdaSjBYQlgQY8QQiDMdgyc4wAvAH2y51JSp4CnYKcQokAMuLEZWEVofFnA3hHrgCzUXrGjDAb9wet28VKw4Nakn35ZnSEkkAL8l2cSCzG+n8LnpU0eW9wTFYgPnIckzDDcbnEgRj6dmz6IpCk2WzsX7dlvzRWi0UXvA87ukYAgYkrmmCUse2wWIYbzNruP6uEJYE";
const IRONCORE_V3_DOCUMENT: &str = "A0lST04ANgocVzWAgU8k159ETeoE+b9F0wkZFjn6psKQhQ8dWhoWChRJTlRFR1JBVElPTi1URVNULUdDUNRZlwKbH7ZHtnQ2hdiGdNBJhqIC0p+hqMnzRO7AymqrCo8ohE8bIscVfTFk";

#[test]
fn ironcores_leased_edek_reads_field_for_field() {
    let envelope = EncryptedDeks::from_base64(IRONCORE_LEASED_GCP_EDEK).unwrap();
    let [entry] = envelope.encrypted_deks.as_slice() else { panic!("one entry expected") };
    assert_eq!(entry.kms_config_id, 534);
    assert_eq!(entry.leased_key_id, 625);
    assert_eq!(entry.leased_key_iv.len(), 12);
    assert_eq!(
        entry.encrypted_dek_data.len(),
        48,
        "AES-256-GCM of a 32-byte DEK under the lease key"
    );
    assert_eq!(entry.tenant_id, "", "their proxy left tenantId out at the time");
    assert!(entry.is_leased());
    // The nested entry: the lease key as GCP KMS wrapped it, under the same configuration.
    let lease = entry.lease_parts().unwrap().unwrap();
    assert_eq!(lease.lease_id, 625);
    assert_eq!(lease.sealed_dek.len(), 48);
    assert_eq!(lease.wrapped_lease_key.len(), 113);
    // Writing it back gives IronCore's exact bytes (no field lost or reordered).
    assert_eq!(envelope.to_base64(), IRONCORE_LEASED_GCP_EDEK);
}

#[test]
fn ironcores_v3_document_parses_with_its_tenant() {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(IRONCORE_V3_DOCUMENT).unwrap();
    let field = parse_v3(&bytes).unwrap();
    assert_eq!(field.tenant_id.as_deref(), Some("INTEGRATION-TEST-GCP"));
    // Prefix, length, 54-byte header, IV and tag: any shorter cut is refused, never a panic.
    // (Longer cuts still have the structure; decryption refuses them by the tag.)
    let minimum = 5 + 2 + 54 + 12 + 16;
    assert_eq!(bytes.len(), minimum + 16, "16 bytes of ciphertext: \"I'm Gumby dammit\"");
    for cut in 0..minimum {
        assert!(parse_v3(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

//! # keyhold-e2e
//!
//! End-to-end encryption for customer-controlled data: documents encrypted once to groups and
//! users, read by their members' devices through transforms a server applies without being able
//! to decrypt (docs/e2e-crypto.md). Sans-I/O: no network, no files, no async runtime.
//!
//! | module | job |
//! |---|---|
//! | [`pre`] | transform (proxy re-) encryption on BLS12-381: keys, encrypt, transform keys, transform, decrypt |
//! | [`keys`] | users', devices' and groups' key pairs and how their private keys are kept |
//! | [`document`] | encrypted, signed documents and the grants that open them |
//! | [`access`] | the server's rules and state: users, devices, groups, grants, decrypts, audit events |
//! | [`trust`] | why a device believes a public key: owners' signatures over users' and groups' keys, pins, fingerprints |
//! | [`wire`] | the E2E HTTP API's JSON shapes and the devices' request signatures |

pub mod access;
pub mod document;
pub mod keys;
pub mod pre;
pub mod trust;
pub mod wire;

#[cfg(test)]
mod attack_tests;

pub use access::{
    AccessError, AccessState, Actor, DecryptGrant, DeviceCertificate, E2eAction, E2eEvent,
};
pub use document::{DocumentError, EncryptedDocument, Grant, Recipient};
/// An Ed25519 public key (users' and devices' signing keys).
pub use ed25519_dalek::VerifyingKey;
pub use keys::{
    DeviceKeys, KeyError, KeySealedToPublicKey, PassphraseCost, PassphraseSealedKey, UserKeys,
};
pub use pre::{EncryptedValue, PreError, PrivateKey, PublicKey, TransformKey};
/// The operating system's CSPRNG, in the form this crate's functions take.
pub use rand_core::OsRng;
pub use trust::{KeyPins, SignedGroupKey, SignedUserKeys};

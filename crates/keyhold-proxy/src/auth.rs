//! API key authentication: `Authorization: cmk <api-key>`, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The accepted API keys, kept only as SHA-256 digests so that comparisons take the same time
/// whatever the length or content of the key a caller sends.
#[derive(Clone)]
pub struct ApiKeys {
    // Shared: the state holding these is cloned for every request.
    digests: std::sync::Arc<[[u8; 32]]>,
}

impl core::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    /// Accepts any of `keys`.
    pub fn new(keys: &[Zeroizing<String>]) -> Self {
        Self { digests: keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect() }
    }

    /// True if `candidate` is one of the keys. Every key is compared, match or not.
    pub fn verify(&self, candidate: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate).into();
        let mut matched = subtle::Choice::from(0);
        for known in self.digests.iter() {
            matched |= known.ct_eq(&digest);
        }
        matched.into()
    }

    /// Checks an `Authorization` header value of the form `cmk <key>`.
    pub fn verify_header(&self, value: &[u8]) -> bool {
        let Some((scheme, key)) = split_scheme(value) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(keyhold_core::wire::AUTH_SCHEME.as_bytes()) && self.verify(key)
    }
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let key = rest.get(1..)?.trim_ascii();
    (!key.is_empty()).then_some((scheme, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms() {
        let keys = ApiKeys::new(&[
            Zeroizing::new("first-key-0123456789".into()),
            Zeroizing::new("second-key-0123456789".into()),
        ]);
        assert!(keys.verify_header(b"cmk first-key-0123456789"));
        assert!(keys.verify_header(b"CMK second-key-0123456789"));
        assert!(!keys.verify_header(b"cmk first-key-012345678"));
        assert!(!keys.verify_header(b"Bearer first-key-0123456789"));
        assert!(!keys.verify_header(b"cmk"));
        assert!(!keys.verify_header(b"cmk "));
        assert!(!keys.verify_header(b"first-key-0123456789"));
        assert!(!keys.verify_header(b""));
    }
}

//! Bearer credentials (the vendor API key, the proxies' token), compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Shortest key or token accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// One accepted bearer credential. Only its SHA-256 is kept, so comparisons take the same time
/// whatever the length of the candidate.
pub struct BearerKey {
    digest: [u8; 32],
}

impl core::fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("BearerKey(<redacted>)")
    }
}

impl BearerKey {
    /// From the key's bytes (at least [`MIN_KEY_LEN`]); `None` if too short.
    pub fn new(key: &[u8]) -> Option<Self> {
        (key.len() >= MIN_KEY_LEN).then(|| Self { digest: Sha256::digest(key).into() })
    }

    /// Whether an `Authorization` header value is `Bearer <this key>`.
    pub fn verify_header(&self, value: &[u8]) -> bool {
        let Some(candidate) = strip_bearer(value) else {
            return false;
        };
        let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(candidate)));
        bool::from(self.digest.ct_eq(&*digest))
    }
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let rest = value.get(7..)?;
    let start = rest.iter().position(|b| *b != b' ')?;
    rest.get(start..)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_forms() {
        let key = BearerKey::new(b"0123456789abcdef").unwrap();
        assert!(key.verify_header(b"Bearer 0123456789abcdef"));
        assert!(key.verify_header(b"bearer  0123456789abcdef"));
        assert!(!key.verify_header(b"Bearer 0123456789abcdeX"));
        assert!(!key.verify_header(b"0123456789abcdef"));
        assert!(!key.verify_header(b"Basic 0123456789abcdef"));
        assert!(BearerKey::new(b"short").is_none());
    }
}

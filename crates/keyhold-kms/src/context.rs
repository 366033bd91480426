//! The context every wrap and unwrap is bound to.

/// What a wrapped key belongs to: a tenant and one of its KMS configurations. Backends bind it
/// to the ciphertext so that a wrapped key only unwraps in the context it was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyContext<'a> {
    /// The tenant id.
    pub tenant_id: &'a str,
    /// The tenant's KMS configuration id (as recorded in the EDEK).
    pub kms_config_id: i32,
}

impl<'a> KeyContext<'a> {
    /// A context for `tenant_id` and `kms_config_id`.
    pub fn new(tenant_id: &'a str, kms_config_id: i32) -> Self {
        Self { tenant_id, kms_config_id }
    }

    /// A canonical, unambiguous byte encoding for use as associated data:
    /// `"keyhold/kms-context/v1\0" ‖ i32be(config id) ‖ u32be(len(tenant)) ‖ tenant`.
    pub fn associated_data(&self) -> Vec<u8> {
        const LABEL: &[u8] = b"keyhold/kms-context/v1\0";
        let tenant = self.tenant_id.as_bytes();
        let mut out = Vec::with_capacity(LABEL.len() + 8 + tenant.len());
        out.extend_from_slice(LABEL);
        out.extend_from_slice(&self.kms_config_id.to_be_bytes());
        out.extend_from_slice(&u32::try_from(tenant.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(tenant);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_unambiguous() {
        let a = KeyContext::new("ab", 1).associated_data();
        let b = KeyContext::new("a", 1).associated_data();
        let c = KeyContext::new("ab", 2).associated_data();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.ends_with(b"\x00\x00\x00\x01\x00\x00\x00\x02ab"));
    }
}

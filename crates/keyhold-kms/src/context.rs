//! The context every wrap and unwrap is bound to.

/// What a wrapped key is for. Bound into the context so that a KMS ciphertext made for one
/// purpose never unwraps as the other: a lease encryption key (which opens every data key of
/// its lease) cannot be passed off as a data key and handed to an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyPurpose {
    /// A data key (DEK), returned to applications.
    #[default]
    DataKey,
    /// A lease encryption key (LEK): stays in proxy memory and wraps data keys locally.
    LeaseKey,
    /// A tenant secret (deterministic encryption): stays in the proxy, which derives field keys
    /// from it. Made and stored wrapped like a data key, so it must never unwrap as one.
    TenantSecret,
}

/// What a wrapped key belongs to: a tenant and one of its KMS configurations, and what the key
/// is for. Backends bind it to the ciphertext so that a wrapped key only unwraps in the context
/// it was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyContext<'a> {
    /// The tenant id.
    pub tenant_id: &'a str,
    /// The tenant's KMS configuration id (as recorded in the EDEK).
    pub kms_config_id: i32,
    /// Data key, lease key or tenant secret.
    pub purpose: KeyPurpose,
    /// For a tenant secret: the secret path it belongs to (so that a secret cannot be moved to
    /// another path of the same tenant); empty for the other purposes.
    pub secret_path: &'a str,
}

impl<'a> KeyContext<'a> {
    /// A context for a data key of `tenant_id` and `kms_config_id`.
    pub fn new(tenant_id: &'a str, kms_config_id: i32) -> Self {
        Self { tenant_id, kms_config_id, purpose: KeyPurpose::DataKey, secret_path: "" }
    }

    /// A context for a lease encryption key of `tenant_id` and `kms_config_id`.
    pub fn lease(tenant_id: &'a str, kms_config_id: i32) -> Self {
        Self { tenant_id, kms_config_id, purpose: KeyPurpose::LeaseKey, secret_path: "" }
    }

    /// A context for a tenant secret of `tenant_id`, `kms_config_id` and `secret_path`.
    pub fn tenant_secret(tenant_id: &'a str, kms_config_id: i32, secret_path: &'a str) -> Self {
        Self { tenant_id, kms_config_id, purpose: KeyPurpose::TenantSecret, secret_path }
    }

    /// A canonical, unambiguous byte encoding for use as associated data:
    /// `label ‖ i32be(config id) ‖ u32be(len(tenant)) ‖ tenant`, where the label is
    /// `"keyhold/kms-context/v1\0"` for data keys, `"keyhold/kms-lease-context/v1\0"` for
    /// lease keys and `"keyhold/kms-secret-context/v1\0"` for tenant secrets, which are followed
    /// by `u32be(len(secret path)) ‖ secret path`.
    pub fn associated_data(&self) -> Vec<u8> {
        let label: &[u8] = match self.purpose {
            KeyPurpose::DataKey => b"keyhold/kms-context/v1\0",
            KeyPurpose::LeaseKey => b"keyhold/kms-lease-context/v1\0",
            KeyPurpose::TenantSecret => b"keyhold/kms-secret-context/v1\0",
        };
        let tenant = self.tenant_id.as_bytes();
        let mut out = Vec::with_capacity(label.len() + 8 + tenant.len());
        out.extend_from_slice(label);
        out.extend_from_slice(&self.kms_config_id.to_be_bytes());
        out.extend_from_slice(&u32::try_from(tenant.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(tenant);
        if self.purpose == KeyPurpose::TenantSecret {
            let path = self.secret_path.as_bytes();
            out.extend_from_slice(&u32::try_from(path.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(path);
        }
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
        let d = KeyContext::lease("ab", 1).associated_data();
        let e = KeyContext::tenant_secret("ab", 1, "users").associated_data();
        assert_ne!(a, e);
        assert_ne!(e, KeyContext::tenant_secret("ab", 1, "orders").associated_data());
        assert!(e.ends_with(b"\x00\x00\x00\x02ab\x00\x00\x00\x05users"));
        assert_ne!(d, e);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.ends_with(b"\x00\x00\x00\x01\x00\x00\x00\x02ab"));
        // Data-key contexts keep the encoding every existing EDEK was made with.
        assert!(a.starts_with(b"keyhold/kms-context/v1\0"));
        assert!(d.starts_with(b"keyhold/kms-lease-context/v1\0"));
    }
}

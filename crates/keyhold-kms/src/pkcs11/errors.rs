//! What each PKCS#11 return value means for Keyhold: one [`KmsError`] variant, and whether the
//! session (or the slot) it happened on can be used again. The table in the module docs
//! (`super`) describes this function; keep the two in step.

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};

use crate::KmsError;

/// The operation a PKCS#11 call was part of (some return values mean different things in a
/// wrap and an unwrap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Opening a session, logging in, finding the slot or the key.
    Setup,
    /// Wrapping a data key.
    Wrap,
    /// Unwrapping a data key.
    Unwrap,
    /// The health check.
    Health,
}

/// A PKCS#11 failure, mapped.
#[derive(Debug)]
pub(super) struct Mapped {
    /// What the caller sees.
    pub error: KmsError,
    /// The session may be in an unknown state (or gone): close it instead of pooling it.
    pub drop_session: bool,
    /// The token may have left its slot: find the slot (and the key handles) again next time.
    pub forget_slot: bool,
}

/// Maps a failed PKCS#11 call made during `op` on the key labelled `key_label`.
pub(super) fn map(err: &Error, op: Op, key_label: &str) -> Mapped {
    let (rv, function) = match err {
        Error::Pkcs11(rv, function) => (*rv, *function),
        Error::LibraryLoading(e) => {
            return mapped(
                KmsError::ConfigurationInvalid(format!("cannot load the PKCS#11 module: {e}")),
                false,
                false,
            );
        }
        // Conversions and missing functions: the module does not fit what we ask of it.
        Error::NullFunctionPointer | Error::MissingSymbol(_) | Error::NotSupported => {
            return mapped(
                KmsError::ConfigurationInvalid(format!(
                    "the PKCS#11 module lacks a function: {err}"
                )),
                false,
                false,
            );
        }
        other => return mapped(failed(op, &format!("PKCS#11: {other}")), true, false),
    };
    let call = format!("C_{function:?} returned {}", rv_name(rv));
    let decrypting = matches!(function, Function::Decrypt | Function::UnwrapKey);
    match rv {
        RvError::PinIncorrect
        | RvError::PinInvalid
        | RvError::PinLenRange
        | RvError::PinExpired
        | RvError::PinLocked
        | RvError::UserNotLoggedIn
        | RvError::UserPinNotInitialized
        | RvError::UserAnotherAlreadyLoggedIn
        | RvError::UserTooManyTypes => mapped(
            KmsError::AccessDenied(format!("the token refused the login ({call})")),
            false,
            false,
        ),
        RvError::KeyFunctionNotPermitted => mapped(
            KmsError::KeyDisabled(format!(
                "the key labelled {key_label:?} may not be used for this operation ({call})"
            )),
            false,
            false,
        ),
        // The ciphertext was altered, or belongs to another key or context. SoftHSM answers a
        // failed GCM tag check with CKR_GENERAL_ERROR; the session's operation has ended, but the
        // session is dropped anyway in case a module leaves it in an odd state.
        RvError::EncryptedDataInvalid
        | RvError::EncryptedDataLenRange
        | RvError::WrappedKeyInvalid
        | RvError::WrappedKeyLenRange
        | RvError::GeneralError
            if op == Op::Unwrap && decrypting =>
        {
            mapped(KmsError::InvalidCiphertext, rv == RvError::GeneralError, false)
        }
        RvError::KeyHandleInvalid
        | RvError::ObjectHandleInvalid
        | RvError::KeyTypeInconsistent
        | RvError::KeySizeRange
        | RvError::KeyNotWrappable
        | RvError::KeyUnextractable
        | RvError::WrappingKeyHandleInvalid
        | RvError::WrappingKeyTypeInconsistent
        | RvError::WrappingKeySizeRange
        | RvError::UnwrappingKeyHandleInvalid
        | RvError::UnwrappingKeyTypeInconsistent
        | RvError::UnwrappingKeySizeRange
        | RvError::MechanismInvalid
        | RvError::MechanismParamInvalid
        | RvError::TemplateIncomplete
        | RvError::TemplateInconsistent
        | RvError::AttributeTypeInvalid
        | RvError::AttributeValueInvalid
        | RvError::AttributeReadOnly
        | RvError::SlotIdInvalid
        | RvError::TokenNotRecognized
        | RvError::TokenWriteProtected
        | RvError::FunctionNotSupported => mapped(
            KmsError::ConfigurationInvalid(format!(
                "the token cannot do this with the key labelled {key_label:?} ({call})"
            )),
            false,
            false,
        ),
        // Too many sessions open on the token: another client holds them; it may pass.
        RvError::SessionCount => mapped(KmsError::Throttled, false, false),
        RvError::DeviceRemoved | RvError::TokenNotPresent => {
            mapped(KmsError::Unreachable(format!("the token is gone ({call})")), true, true)
        }
        RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::HostMemory
        | RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::FunctionFailed
        | RvError::GeneralError
        | RvError::CryptokiNotInitialized
        | RvError::OperationActive
        | RvError::FunctionCanceled => {
            mapped(KmsError::Unreachable(format!("the HSM failed ({call})")), true, false)
        }
        _ => mapped(failed(op, &call), true, false),
    }
}

fn failed(op: Op, message: &str) -> KmsError {
    match op {
        Op::Unwrap => KmsError::UnwrapFailed(message.to_owned()),
        Op::Setup | Op::Wrap | Op::Health => KmsError::WrapFailed(message.to_owned()),
    }
}

fn mapped(error: KmsError, drop_session: bool, forget_slot: bool) -> Mapped {
    Mapped { error, drop_session, forget_slot }
}

/// `CKR_KEY_FUNCTION_NOT_PERMITTED` for [`RvError::KeyFunctionNotPermitted`]: the names HSM
/// documentation and logs use.
fn rv_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    out.push_str("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkcs11(rv: RvError, function: Function) -> Error {
        Error::Pkcs11(rv, function)
    }

    #[test]
    fn names_follow_the_specification() {
        assert_eq!(rv_name(RvError::KeyFunctionNotPermitted), "CKR_KEY_FUNCTION_NOT_PERMITTED");
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
    }

    #[test]
    fn table() {
        let m = map(&pkcs11(RvError::PinIncorrect, Function::Login), Op::Setup, "k");
        assert!(matches!(m.error, KmsError::AccessDenied(_)));
        let m = map(&pkcs11(RvError::PinLocked, Function::Login), Op::Setup, "k");
        assert!(matches!(m.error, KmsError::AccessDenied(_)));
        let m =
            map(&pkcs11(RvError::KeyFunctionNotPermitted, Function::DecryptInit), Op::Unwrap, "k");
        assert!(matches!(m.error, KmsError::KeyDisabled(ref s) if s.contains("\"k\"")));
        let m = map(&pkcs11(RvError::GeneralError, Function::Decrypt), Op::Unwrap, "k");
        assert_eq!(m.error, KmsError::InvalidCiphertext);
        assert!(m.drop_session);
        let m = map(&pkcs11(RvError::GeneralError, Function::Encrypt), Op::Wrap, "k");
        assert!(matches!(m.error, KmsError::Unreachable(_)));
        let m = map(&pkcs11(RvError::EncryptedDataInvalid, Function::Decrypt), Op::Unwrap, "k");
        assert_eq!(m.error, KmsError::InvalidCiphertext);
        let m = map(&pkcs11(RvError::KeyHandleInvalid, Function::EncryptInit), Op::Wrap, "k");
        assert!(matches!(m.error, KmsError::ConfigurationInvalid(_)));
        let m = map(&pkcs11(RvError::DeviceRemoved, Function::Encrypt), Op::Wrap, "k");
        assert!(matches!(m.error, KmsError::Unreachable(_)));
        assert!(m.drop_session && m.forget_slot);
        let m = map(&pkcs11(RvError::SessionHandleInvalid, Function::Encrypt), Op::Wrap, "k");
        assert!(matches!(m.error, KmsError::Unreachable(_)) && m.drop_session);
        let m = map(&pkcs11(RvError::SessionCount, Function::OpenSession), Op::Setup, "k");
        assert_eq!(m.error, KmsError::Throttled);
        let m = map(&pkcs11(RvError::DataLenRange, Function::Decrypt), Op::Unwrap, "k");
        assert!(matches!(m.error, KmsError::UnwrapFailed(_)));
    }
}

//! The KMIP 1.x request and response messages this client sends and reads, built on [`ttlv`].
//!
//! Field order inside each payload follows the KMIP 1.2/1.4 specification (servers such as
//! PyKMIP read fields in order). Only what the backend uses is here: Locate, Get Attributes,
//! Encrypt, Decrypt, MAC, and Create/Activate/Revoke/Destroy for key administration in tests.

use super::ttlv::Item;

/// KMIP tags (KMIP 1.4 specification, section 9.1.3.1). Some serve only key administration.
#[cfg_attr(not(feature = "conformance"), allow(dead_code))]
pub mod tag {
    pub const ATTRIBUTE: u32 = 0x420008;
    pub const ATTRIBUTE_NAME: u32 = 0x42000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
    pub const AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA: u32 = 0x4200FE;
    pub const AUTHENTICATED_ENCRYPTION_TAG: u32 = 0x4200FF;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const CRYPTOGRAPHIC_LENGTH: u32 = 0x42002A;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const CRYPTOGRAPHIC_USAGE_MASK: u32 = 0x42002C;
    pub const DATA: u32 = 0x4200C2;
    pub const IV_COUNTER_NONCE: u32 = 0x42003D;
    pub const MAC_DATA: u32 = 0x4200C6;
    pub const NAME: u32 = 0x420053;
    pub const NAME_TYPE: u32 = 0x420054;
    pub const NAME_VALUE: u32 = 0x420055;
    pub const OBJECT_TYPE: u32 = 0x420057;
    pub const OPERATION: u32 = 0x42005C;
    pub const PADDING_METHOD: u32 = 0x42005F;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_HEADER: u32 = 0x42007A;
    pub const RESPONSE_MESSAGE: u32 = 0x42007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const RESULT_REASON: u32 = 0x42007E;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const REVOCATION_REASON: u32 = 0x420081;
    pub const REVOCATION_REASON_CODE: u32 = 0x420082;
    pub const TAG_LENGTH: u32 = 0x4200CE;
    pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
}

/// Operation codes (Create, Activate, Revoke and Destroy serve only key administration).
#[cfg_attr(not(feature = "conformance"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Operation {
    /// Create a symmetric key.
    Create = 0x01,
    /// Find objects by attributes.
    Locate = 0x08,
    /// Read attributes of an object.
    GetAttributes = 0x0B,
    /// Pre-Active → Active.
    Activate = 0x12,
    /// Active → Deactivated (or Compromised).
    Revoke = 0x13,
    /// Destroy the key material.
    Destroy = 0x14,
    /// Encrypt with a key held by the server (KMIP 1.2).
    Encrypt = 0x1F,
    /// Decrypt with a key held by the server (KMIP 1.2).
    Decrypt = 0x20,
    /// Compute a MAC with a key held by the server (KMIP 1.2).
    Mac = 0x23,
}

impl Operation {
    /// The operation's name in the specification.
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "Create",
            Self::Locate => "Locate",
            Self::GetAttributes => "Get Attributes",
            Self::Activate => "Activate",
            Self::Revoke => "Revoke",
            Self::Destroy => "Destroy",
            Self::Encrypt => "Encrypt",
            Self::Decrypt => "Decrypt",
            Self::Mac => "MAC",
        }
    }
}

/// Result Reason values (KMIP 1.4 and 2.x, section 11.10 / 11.13).
pub mod reason {
    pub const ITEM_NOT_FOUND: u32 = 0x01;
    pub const AUTHENTICATION_NOT_SUCCESSFUL: u32 = 0x03;
    pub const INVALID_MESSAGE: u32 = 0x04;
    pub const OPERATION_NOT_SUPPORTED: u32 = 0x05;
    pub const MISSING_DATA: u32 = 0x06;
    pub const INVALID_FIELD: u32 = 0x07;
    pub const FEATURE_NOT_SUPPORTED: u32 = 0x08;
    pub const CRYPTOGRAPHIC_FAILURE: u32 = 0x0A;
    pub const ILLEGAL_OPERATION: u32 = 0x0B;
    pub const PERMISSION_DENIED: u32 = 0x0C;
    pub const OBJECT_ARCHIVED: u32 = 0x0D;
    pub const KEY_FORMAT_TYPE_NOT_SUPPORTED: u32 = 0x10;
    pub const USAGE_LIMIT_EXCEEDED: u32 = 0x1A;
    pub const BAD_CRYPTOGRAPHIC_PARAMETERS: u32 = 0x24;
    pub const INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK: u32 = 0x29;
    pub const INTERNAL_SERVER_ERROR: u32 = 0x2A;
    pub const OBJECT_DESTROYED: u32 = 0x36;
    pub const OBJECT_NOT_FOUND: u32 = 0x37;
    pub const NOT_AUTHORISED: u32 = 0x39;
    pub const SERVER_LIMIT_EXCEEDED: u32 = 0x3A;
    pub const UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS: u32 = 0x3E;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u32 = 0x3F;
    pub const WRONG_KEY_LIFECYCLE_STATE: u32 = 0x43;
    pub const GENERAL_FAILURE: u32 = 0x100;
}

/// Enumeration values used in requests.
#[cfg_attr(not(feature = "conformance"), allow(dead_code))]
pub mod value {
    /// Object Type: Symmetric Key.
    pub const SYMMETRIC_KEY: u32 = 0x02;
    /// Cryptographic Algorithm: AES.
    pub const AES: u32 = 0x03;
    /// Cryptographic Algorithm: HMAC-SHA256.
    pub const HMAC_SHA256: u32 = 0x09;
    /// Block Cipher Mode: CBC.
    pub const CBC: u32 = 0x01;
    /// Block Cipher Mode: GCM.
    pub const GCM: u32 = 0x09;
    /// Padding Method: PKCS5 (PKCS#7 on 16-byte blocks).
    pub const PKCS5: u32 = 0x03;
    /// Name Type: Uninterpreted Text String.
    pub const UNINTERPRETED_TEXT_STRING: u32 = 0x01;
    /// State: Active.
    pub const STATE_ACTIVE: u32 = 0x02;
    /// Revocation Reason Code: Cessation of Operation.
    pub const CESSATION_OF_OPERATION: u32 = 0x06;
    /// Result Status: Success.
    pub const SUCCESS: u32 = 0x00;
}

/// The name of a KMIP key State value.
pub fn state_name(state: u32) -> &'static str {
    match state {
        1 => "Pre-Active",
        2 => "Active",
        3 => "Deactivated",
        4 => "Compromised",
        5 => "Destroyed",
        6 => "Destroyed Compromised",
        _ => "unknown",
    }
}

/// A protocol version (major, minor).
pub type Version = (i32, i32);

/// A request message holding one batch item.
pub fn request(version: Version, operation: Operation, payload: Vec<Item>) -> Item {
    Item::structure(
        tag::REQUEST_MESSAGE,
        vec![
            Item::structure(
                tag::REQUEST_HEADER,
                vec![
                    Item::structure(
                        tag::PROTOCOL_VERSION,
                        vec![
                            Item::integer(tag::PROTOCOL_VERSION_MAJOR, version.0),
                            Item::integer(tag::PROTOCOL_VERSION_MINOR, version.1),
                        ],
                    ),
                    Item::integer(tag::BATCH_COUNT, 1),
                ],
            ),
            Item::structure(
                tag::BATCH_ITEM,
                vec![
                    Item::enumeration(tag::OPERATION, operation as u32),
                    Item::structure(tag::REQUEST_PAYLOAD, payload),
                ],
            ),
        ],
    )
}

/// What a server answered besides success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The operation failed: Result Reason (if given) and Result Message.
    Failed {
        /// The Result Reason value.
        reason: Option<u32>,
        /// The Result Message, cleaned for logs.
        message: String,
    },
    /// The response is not a well-formed answer to the request.
    Malformed(String),
}

/// The response payload of a successful single-item response to `operation`.
pub fn response_payload(response: &Item, operation: Operation) -> Result<Item, Answer> {
    let malformed = |what: &str| Answer::Malformed(what.to_owned());
    if response.tag != tag::RESPONSE_MESSAGE {
        return Err(malformed("not a KMIP response message"));
    }
    let header = response.child(tag::RESPONSE_HEADER).ok_or_else(|| malformed("no header"))?;
    if header.child(tag::BATCH_COUNT).and_then(Item::as_int) != Some(1) {
        return Err(malformed("batch count is not 1"));
    }
    let mut items = response.children(tag::BATCH_ITEM);
    let item = items.next().ok_or_else(|| malformed("no batch item"))?;
    if items.next().is_some() {
        return Err(malformed("more than one batch item"));
    }
    let status = item
        .child(tag::RESULT_STATUS)
        .and_then(Item::as_enum)
        .ok_or_else(|| malformed("no result status"))?;
    if status != value::SUCCESS {
        let reason = item.child(tag::RESULT_REASON).and_then(Item::as_enum);
        let message = item.child(tag::RESULT_MESSAGE).and_then(Item::as_text).unwrap_or("");
        return Err(Answer::Failed { reason, message: clean(message) });
    }
    // Error responses may omit the operation; a successful one names the operation asked for.
    if let Some(op) = item.child(tag::OPERATION).and_then(Item::as_enum)
        && op != operation as u32
    {
        return Err(malformed("answer to another operation"));
    }
    item.child(tag::RESPONSE_PAYLOAD).cloned().ok_or_else(|| malformed("no response payload"))
}

/// A server's text, made safe for logs and error messages: printable, at most 200 characters.
pub fn clean(text: &str) -> String {
    let mut out: String =
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

fn attribute(name: &str, value: Item) -> Item {
    Item::structure(
        tag::ATTRIBUTE,
        vec![
            Item::text(tag::ATTRIBUTE_NAME, name),
            Item { tag: tag::ATTRIBUTE_VALUE, value: value.value },
        ],
    )
}

fn name_value(name: &str) -> Item {
    Item::structure(
        tag::NAME,
        vec![
            Item::text(tag::NAME_VALUE, name),
            Item::enumeration(tag::NAME_TYPE, value::UNINTERPRETED_TEXT_STRING),
        ],
    )
}

/// Locate: symmetric keys named `name`, only Active ones if `active_only`.
pub fn locate(name: &str, active_only: bool) -> Vec<Item> {
    let mut attributes = vec![
        attribute("Object Type", Item::enumeration(0, value::SYMMETRIC_KEY)),
        attribute("Name", name_value(name)),
    ];
    if active_only {
        attributes.push(attribute("State", Item::enumeration(0, value::STATE_ACTIVE)));
    }
    attributes
}

/// The Unique Identifiers of a Locate answer.
pub fn located(payload: &Item) -> Result<Vec<String>, Answer> {
    payload
        .children(tag::UNIQUE_IDENTIFIER)
        .map(|id| {
            id.as_text()
                .map(str::to_owned)
                .ok_or_else(|| Answer::Malformed("a located identifier is not text".into()))
        })
        .collect()
}

/// Get Attributes of `uid`, by name.
pub fn get_attributes(uid: &str, names: &[&str]) -> Vec<Item> {
    let mut payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)];
    payload.extend(names.iter().map(|n| Item::text(tag::ATTRIBUTE_NAME, *n)));
    payload
}

/// The value of attribute `name` in a Get Attributes answer (KMIP 1.x layout).
pub fn attribute_value<'a>(payload: &'a Item, name: &str) -> Option<&'a Item> {
    payload
        .children(tag::ATTRIBUTE)
        .find(|a| a.child(tag::ATTRIBUTE_NAME).and_then(Item::as_text) == Some(name))
        .and_then(|a| a.child(tag::ATTRIBUTE_VALUE))
}

/// Cryptographic Parameters for AES-CBC with PKCS#5 padding.
pub fn cbc_parameters() -> Item {
    Item::structure(
        tag::CRYPTOGRAPHIC_PARAMETERS,
        vec![
            Item::enumeration(tag::BLOCK_CIPHER_MODE, value::CBC),
            Item::enumeration(tag::PADDING_METHOD, value::PKCS5),
            Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, value::AES),
        ],
    )
}

/// Cryptographic Parameters for AES-GCM with a `tag_len`-byte tag (KMIP 1.4).
pub fn gcm_parameters(tag_len: i32) -> Item {
    Item::structure(
        tag::CRYPTOGRAPHIC_PARAMETERS,
        vec![
            Item::enumeration(tag::BLOCK_CIPHER_MODE, value::GCM),
            Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, value::AES),
            Item::integer(tag::TAG_LENGTH, tag_len),
        ],
    )
}

/// Cryptographic Parameters for HMAC-SHA256.
pub fn hmac_sha256_parameters() -> Item {
    Item::structure(
        tag::CRYPTOGRAPHIC_PARAMETERS,
        vec![Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, value::HMAC_SHA256)],
    )
}

/// Encrypt `data` under `uid` with `parameters`, `iv`, and (KMIP 1.4) additional data.
pub fn encrypt(
    uid: &str,
    parameters: Item,
    data: &[u8],
    iv: &[u8],
    aad: Option<&[u8]>,
) -> Vec<Item> {
    let mut payload = vec![
        Item::text(tag::UNIQUE_IDENTIFIER, uid),
        parameters,
        Item::bytes(tag::DATA, data),
        Item::bytes(tag::IV_COUNTER_NONCE, iv),
    ];
    if let Some(aad) = aad {
        payload.push(Item::bytes(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad));
    }
    payload
}

/// Decrypt `data`; for AEAD modes with additional data and tag (KMIP 1.4).
pub fn decrypt(
    uid: &str,
    parameters: Item,
    data: &[u8],
    iv: &[u8],
    aead: Option<(&[u8], &[u8])>,
) -> Vec<Item> {
    let mut payload = vec![
        Item::text(tag::UNIQUE_IDENTIFIER, uid),
        parameters,
        Item::bytes(tag::DATA, data),
        Item::bytes(tag::IV_COUNTER_NONCE, iv),
    ];
    if let Some((aad, auth_tag)) = aead {
        payload.push(Item::bytes(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad));
        payload.push(Item::bytes(tag::AUTHENTICATED_ENCRYPTION_TAG, auth_tag));
    }
    payload
}

/// MAC of `data` under `uid` with HMAC-SHA256.
pub fn mac(uid: &str, data: &[u8]) -> Vec<Item> {
    vec![
        Item::text(tag::UNIQUE_IDENTIFIER, uid),
        hmac_sha256_parameters(),
        Item::bytes(tag::DATA, data),
    ]
}

/// A byte string field of a response payload.
pub fn bytes_field(payload: &Item, field: u32) -> Option<&[u8]> {
    payload.child(field).and_then(Item::as_bytes)
}

/// Create an AES-256 key named `name` with `usage_mask`.
#[cfg_attr(not(feature = "conformance"), allow(dead_code))]
pub fn create_aes_key(name: &str, usage_mask: i32) -> Vec<Item> {
    vec![
        Item::enumeration(tag::OBJECT_TYPE, value::SYMMETRIC_KEY),
        Item::structure(
            tag::TEMPLATE_ATTRIBUTE,
            vec![
                attribute(
                    "Cryptographic Algorithm",
                    Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, value::AES),
                ),
                attribute("Cryptographic Length", Item::integer(tag::CRYPTOGRAPHIC_LENGTH, 256)),
                attribute(
                    "Cryptographic Usage Mask",
                    Item::integer(tag::CRYPTOGRAPHIC_USAGE_MASK, usage_mask),
                ),
                attribute("Name", name_value(name)),
            ],
        ),
    ]
}

/// Payload naming one object (Activate, Destroy).
#[cfg_attr(not(feature = "conformance"), allow(dead_code))]
pub fn by_id(uid: &str) -> Vec<Item> {
    vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)]
}

/// Revoke `uid` for "cessation of operation" (Active → Deactivated).
#[cfg_attr(not(feature = "conformance"), allow(dead_code))]
pub fn revoke(uid: &str) -> Vec<Item> {
    vec![
        Item::text(tag::UNIQUE_IDENTIFIER, uid),
        Item::structure(
            tag::REVOCATION_REASON,
            vec![Item::enumeration(tag::REVOCATION_REASON_CODE, value::CESSATION_OF_OPERATION)],
        ),
    ]
}

/// The Unique Identifier of an answer.
#[cfg_attr(not(feature = "conformance"), allow(dead_code))]
pub fn unique_identifier(payload: &Item) -> Option<&str> {
    payload.child(tag::UNIQUE_IDENTIFIER).and_then(Item::as_text)
}

/// Whether an item is a structure (for tests of answers).
#[cfg(test)]
pub fn is_structure(item: &Item) -> bool {
    matches!(item.value, super::ttlv::Value::Structure(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u32, extra: Vec<Item>) -> Item {
        let mut batch = vec![
            Item::enumeration(tag::OPERATION, Operation::Mac as u32),
            Item::enumeration(tag::RESULT_STATUS, status),
        ];
        batch.extend(extra);
        Item::structure(
            tag::RESPONSE_MESSAGE,
            vec![
                Item::structure(tag::RESPONSE_HEADER, vec![Item::integer(tag::BATCH_COUNT, 1)]),
                Item::structure(tag::BATCH_ITEM, batch),
            ],
        )
    }

    #[test]
    fn reads_success_and_failure() {
        let ok = response(
            0,
            vec![Item::structure(tag::RESPONSE_PAYLOAD, vec![Item::bytes(tag::MAC_DATA, b"m")])],
        );
        let payload = response_payload(&ok, Operation::Mac).unwrap();
        assert!(is_structure(&payload));
        assert_eq!(bytes_field(&payload, tag::MAC_DATA), Some(&b"m"[..]));
        assert!(matches!(response_payload(&ok, Operation::Encrypt), Err(Answer::Malformed(_))));

        let failed = response(
            1,
            vec![
                Item::enumeration(tag::RESULT_REASON, reason::PERMISSION_DENIED),
                Item::text(tag::RESULT_MESSAGE, "no\nway"),
            ],
        );
        assert_eq!(
            response_payload(&failed, Operation::Mac),
            Err(Answer::Failed {
                reason: Some(reason::PERMISSION_DENIED),
                message: "no way".into()
            })
        );
        assert!(matches!(
            response_payload(&Item::integer(tag::RESPONSE_MESSAGE, 1), Operation::Mac),
            Err(Answer::Malformed(_))
        ));
    }

    #[test]
    fn requests_encode() {
        let message = request((1, 2), Operation::Locate, locate("k", true));
        let bytes = message.encode().unwrap();
        assert_eq!(&bytes[..4], &[0x42, 0x00, 0x78, 0x01]);
        assert_eq!(super::super::ttlv::Item::decode(&bytes).unwrap(), message);
        assert_eq!(clean(&"x".repeat(300)).chars().count(), 201);
    }
}

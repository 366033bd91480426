//! KMIP's TTLV encoding (Tag, Type, Length, Value), the binary form of every KMIP message.
//!
//! Each item is a 3-byte tag, a 1-byte type, a 4-byte big-endian length and the value, padded
//! with zeros to a multiple of 8 bytes. A structure's value is a sequence of items. This module
//! encodes and decodes items; it knows nothing of operations (that is `messages`).
//!
//! The decoder is strict about lengths: a fixed-size type with the wrong length, a length that
//! runs past the input, a structure whose children do not fill it exactly, invalid UTF-8 in a text
//! string, a boolean other than 0 or 1, nesting deeper than [`MAX_DEPTH`]: each is an error,
//! never a panic (a proptest feeds it random bytes). Padding bytes are skipped without being
//! checked, as lenient servers may not zero them.

use zeroize::Zeroizing;

/// How deeply structures may nest in a decoded message (KMIP messages nest about 6 deep).
pub const MAX_DEPTH: usize = 32;

/// KMIP item types.
mod item_type {
    pub const STRUCTURE: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const LONG_INTEGER: u8 = 0x03;
    pub const BIG_INTEGER: u8 = 0x04;
    pub const ENUMERATION: u8 = 0x05;
    pub const BOOLEAN: u8 = 0x06;
    pub const TEXT_STRING: u8 = 0x07;
    pub const BYTE_STRING: u8 = 0x08;
    pub const DATE_TIME: u8 = 0x09;
    pub const INTERVAL: u8 = 0x0A;
    pub const DATE_TIME_EXTENDED: u8 = 0x0B;
}

/// Why bytes are not a TTLV item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlvError {
    /// The input ends inside an item.
    #[error("truncated TTLV item")]
    Truncated,
    /// Bytes follow the last item.
    #[error("trailing bytes after a TTLV item")]
    Trailing,
    /// A type byte KMIP does not define.
    #[error("unknown TTLV type {0:#04x}")]
    UnknownType(u8),
    /// A fixed-size type with another length.
    #[error("TTLV type {item_type:#04x} cannot have length {length}")]
    BadLength {
        /// The type byte.
        item_type: u8,
        /// The length field.
        length: u32,
    },
    /// A text string that is not UTF-8.
    #[error("TTLV text string is not UTF-8")]
    BadText,
    /// A boolean other than 0 or 1.
    #[error("TTLV boolean is neither 0 nor 1")]
    BadBoolean,
    /// Structures nested deeper than [`MAX_DEPTH`].
    #[error("TTLV structures nest too deeply")]
    TooDeep,
    /// A value too long for a 32-bit length (encoding only).
    #[error("TTLV value too long")]
    TooLong,
    /// A tag that does not fit in 24 bits (encoding only).
    #[error("TTLV tag {0:#x} does not fit in 3 bytes")]
    BadTag(u32),
}

/// A TTLV value. Byte strings are wiped on drop and never printed (they carry key material).
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// A sequence of items.
    Structure(Vec<Item>),
    /// A signed 32-bit integer (also bit masks).
    Integer(i32),
    /// A signed 64-bit integer.
    LongInteger(i64),
    /// A big-endian two's-complement integer, a multiple of 8 bytes long.
    BigInteger(Vec<u8>),
    /// A 32-bit enumeration value.
    Enumeration(u32),
    /// A boolean.
    Boolean(bool),
    /// UTF-8 text.
    TextString(String),
    /// Opaque bytes (wiped on drop).
    ByteString(Zeroizing<Vec<u8>>),
    /// Seconds since the Unix epoch.
    DateTime(i64),
    /// Seconds.
    Interval(u32),
    /// Microseconds since the Unix epoch (KMIP 2).
    DateTimeExtended(i64),
}

impl core::fmt::Debug for Value {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Structure(items) => f.debug_list().entries(items).finish(),
            Self::Integer(v) => write!(f, "Integer({v})"),
            Self::LongInteger(v) => write!(f, "LongInteger({v})"),
            Self::BigInteger(v) => write!(f, "BigInteger({} bytes)", v.len()),
            Self::Enumeration(v) => write!(f, "Enumeration({v:#x})"),
            Self::Boolean(v) => write!(f, "Boolean({v})"),
            Self::TextString(v) => write!(f, "TextString({v:?})"),
            Self::ByteString(v) => write!(f, "ByteString({} bytes)", v.len()),
            Self::DateTime(v) => write!(f, "DateTime({v})"),
            Self::Interval(v) => write!(f, "Interval({v})"),
            Self::DateTimeExtended(v) => write!(f, "DateTimeExtended({v})"),
        }
    }
}

/// One tagged TTLV item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The 24-bit tag (`0x42xxxx` for KMIP's own tags).
    pub tag: u32,
    /// The value.
    pub value: Value,
}

impl Item {
    /// A structure.
    pub fn structure(tag: u32, items: Vec<Item>) -> Self {
        Self { tag, value: Value::Structure(items) }
    }
    /// An integer.
    pub fn integer(tag: u32, v: i32) -> Self {
        Self { tag, value: Value::Integer(v) }
    }
    /// An enumeration.
    pub fn enumeration(tag: u32, v: u32) -> Self {
        Self { tag, value: Value::Enumeration(v) }
    }
    /// A text string.
    pub fn text(tag: u32, v: impl Into<String>) -> Self {
        Self { tag, value: Value::TextString(v.into()) }
    }
    /// A byte string (the bytes are copied into wiped-on-drop memory).
    pub fn bytes(tag: u32, v: &[u8]) -> Self {
        Self { tag, value: Value::ByteString(Zeroizing::new(v.to_vec())) }
    }

    /// The first child with `tag`, if this is a structure.
    pub fn child(&self, tag: u32) -> Option<&Item> {
        self.children(tag).next()
    }

    /// Every child with `tag`, in order (none if this is not a structure).
    pub fn children(&self, tag: u32) -> impl Iterator<Item = &Item> {
        let items: &[Item] = match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        };
        items.iter().filter(move |item| item.tag == tag)
    }

    /// The text, if this is a text string.
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(s) => Some(s),
            _ => None,
        }
    }
    /// The bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(b) => Some(b),
            _ => None,
        }
    }
    /// The value, if this is an enumeration.
    pub fn as_enum(&self) -> Option<u32> {
        match self.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        }
    }
    /// The value, if this is an integer.
    pub fn as_int(&self) -> Option<i32> {
        match self.value {
            Value::Integer(v) => Some(v),
            _ => None,
        }
    }
    /// Seconds since the epoch, if this is a date-time (extended date-times are converted).
    pub fn as_date_time(&self) -> Option<i64> {
        match self.value {
            Value::DateTime(v) => Some(v),
            Value::DateTimeExtended(v) => Some(v.div_euclid(1_000_000)),
            _ => None,
        }
    }

    /// The encoded item, appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), TtlvError> {
        if self.tag > 0x00FF_FFFF {
            return Err(TtlvError::BadTag(self.tag));
        }
        let tag = self.tag.to_be_bytes();
        out.extend_from_slice(tag.get(1..).unwrap_or_default());
        let (item_type, body): (u8, Body<'_>) = match &self.value {
            Value::Structure(_) => (item_type::STRUCTURE, Body::Nested),
            Value::Integer(v) => (item_type::INTEGER, Body::Owned(v.to_be_bytes().to_vec())),
            Value::LongInteger(v) => {
                (item_type::LONG_INTEGER, Body::Owned(v.to_be_bytes().to_vec()))
            }
            Value::BigInteger(v) => (item_type::BIG_INTEGER, Body::Borrowed(v)),
            Value::Enumeration(v) => {
                (item_type::ENUMERATION, Body::Owned(v.to_be_bytes().to_vec()))
            }
            Value::Boolean(v) => {
                (item_type::BOOLEAN, Body::Owned(u64::from(*v).to_be_bytes().to_vec()))
            }
            Value::TextString(v) => (item_type::TEXT_STRING, Body::Borrowed(v.as_bytes())),
            Value::ByteString(v) => (item_type::BYTE_STRING, Body::Borrowed(v)),
            Value::DateTime(v) => (item_type::DATE_TIME, Body::Owned(v.to_be_bytes().to_vec())),
            Value::Interval(v) => (item_type::INTERVAL, Body::Owned(v.to_be_bytes().to_vec())),
            Value::DateTimeExtended(v) => {
                (item_type::DATE_TIME_EXTENDED, Body::Owned(v.to_be_bytes().to_vec()))
            }
        };
        out.push(item_type);
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        match body {
            Body::Nested => {
                if let Value::Structure(items) = &self.value {
                    for item in items {
                        item.encode_into(out)?;
                    }
                }
            }
            Body::Owned(bytes) => out.extend_from_slice(&bytes),
            Body::Borrowed(bytes) => out.extend_from_slice(bytes),
        }
        let length = u32::try_from(out.len() - start).map_err(|_| TtlvError::TooLong)?;
        if let Some(slot) = out.get_mut(length_at..start) {
            slot.copy_from_slice(&length.to_be_bytes());
        }
        out.resize(start + padded(length as usize), 0);
        Ok(())
    }

    /// The encoded item, in wiped-on-drop memory (requests carry key material).
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, TtlvError> {
        let mut out = Zeroizing::new(Vec::with_capacity(256));
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes exactly one item that fills `input`.
    pub fn decode(input: &[u8]) -> Result<Item, TtlvError> {
        let (item, used) = decode_item(input, 0)?;
        if used != input.len() {
            return Err(TtlvError::Trailing);
        }
        Ok(item)
    }
}

enum Body<'a> {
    Nested,
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

/// `len` rounded up to a multiple of 8.
fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// The 8-byte header of the item at the start of `input`: tag, type, length.
pub fn decode_header(input: &[u8]) -> Result<(u32, u8, u32), TtlvError> {
    let header: &[u8; 8] = input.first_chunk().ok_or(TtlvError::Truncated)?;
    let [t0, t1, t2, item_type, l0, l1, l2, l3] = *header;
    let tag = u32::from_be_bytes([0, t0, t1, t2]);
    Ok((tag, item_type, u32::from_be_bytes([l0, l1, l2, l3])))
}

/// How many bytes an item whose header says `length` takes in all, padding included.
pub fn encoded_len(length: u32) -> usize {
    8 + padded(length as usize)
}

fn decode_item(input: &[u8], depth: usize) -> Result<(Item, usize), TtlvError> {
    if depth > MAX_DEPTH {
        return Err(TtlvError::TooDeep);
    }
    let (tag, kind, length) = decode_header(input)?;
    let len = length as usize;
    let total = encoded_len(length);
    if input.len() < total {
        return Err(TtlvError::Truncated);
    }
    let body = input.get(8..8 + len).ok_or(TtlvError::Truncated)?;
    let fixed = |expected: usize| -> Result<(), TtlvError> {
        if len == expected { Ok(()) } else { Err(TtlvError::BadLength { item_type: kind, length }) }
    };
    let value = match kind {
        item_type::STRUCTURE => {
            let mut items = Vec::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (item, used) = decode_item(rest, depth + 1)?;
                items.push(item);
                rest = rest.get(used..).ok_or(TtlvError::Truncated)?;
            }
            Value::Structure(items)
        }
        item_type::INTEGER => {
            fixed(4)?;
            Value::Integer(i32::from_be_bytes(array(body)?))
        }
        item_type::LONG_INTEGER => {
            fixed(8)?;
            Value::LongInteger(i64::from_be_bytes(array(body)?))
        }
        item_type::BIG_INTEGER => {
            if !len.is_multiple_of(8) {
                return Err(TtlvError::BadLength { item_type: kind, length });
            }
            Value::BigInteger(body.to_vec())
        }
        item_type::ENUMERATION => {
            fixed(4)?;
            Value::Enumeration(u32::from_be_bytes(array(body)?))
        }
        item_type::BOOLEAN => {
            fixed(8)?;
            match u64::from_be_bytes(array(body)?) {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                _ => return Err(TtlvError::BadBoolean),
            }
        }
        item_type::TEXT_STRING => Value::TextString(
            core::str::from_utf8(body).map_err(|_| TtlvError::BadText)?.to_owned(),
        ),
        item_type::BYTE_STRING => Value::ByteString(Zeroizing::new(body.to_vec())),
        item_type::DATE_TIME => {
            fixed(8)?;
            Value::DateTime(i64::from_be_bytes(array(body)?))
        }
        item_type::INTERVAL => {
            fixed(4)?;
            Value::Interval(u32::from_be_bytes(array(body)?))
        }
        item_type::DATE_TIME_EXTENDED => {
            fixed(8)?;
            Value::DateTimeExtended(i64::from_be_bytes(array(body)?))
        }
        other => return Err(TtlvError::UnknownType(other)),
    };
    Ok((Item { tag, value }, total))
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], TtlvError> {
    bytes.try_into().map_err(|_| TtlvError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_spec_examples() {
        // KMIP 1.x specification, section 9.1.2 (examples of TTLV encoding).
        let cases: Vec<(Item, &str)> = vec![
            (Item::integer(0x420020, 8), "42002002000000040000000800000000"),
            (
                Item { tag: 0x420020, value: Value::LongInteger(123_456_789_000_000_000) },
                "420020030000000801b69b4ba5749200",
            ),
            (Item::enumeration(0x420020, 255), "4200200500000004000000ff00000000"),
            (
                Item { tag: 0x420020, value: Value::Boolean(true) },
                "42002006000000080000000000000001",
            ),
            (
                Item::text(0x420020, "Hello World"),
                "420020070000000b48656c6c6f20576f726c640000000000",
            ),
            (Item::bytes(0x420020, &[1, 2, 3]), "42002008000000030102030000000000"),
            (
                Item { tag: 0x420020, value: Value::DateTime(0x47DA_67F8) },
                "42002009000000080000000047da67f8",
            ),
            (
                Item { tag: 0x420020, value: Value::Interval(864_000) },
                "4200200a00000004000d2f0000000000",
            ),
            (
                Item::structure(
                    0x420020,
                    vec![Item::enumeration(0x420004, 254), Item::integer(0x420005, 255)],
                ),
                "42002001000000204200040500000004000000fe000000004200050200000004000000ff00000000",
            ),
        ];
        for (item, hex) in cases {
            let encoded = item.encode().unwrap();
            let got: String = encoded.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, hex, "{item:?}");
            assert_eq!(Item::decode(&encoded).unwrap(), item);
        }
    }

    #[test]
    fn rejects_malformed_input() {
        let good = Item::structure(0x420078, vec![Item::integer(0x42000D, 1)]).encode().unwrap();
        assert_eq!(Item::decode(&good[..good.len() - 1]), Err(TtlvError::Truncated));
        let mut trailing = good.to_vec();
        trailing.extend_from_slice(&[0; 8]);
        assert_eq!(Item::decode(&trailing), Err(TtlvError::Trailing));
        // An integer claiming 8 bytes.
        let bad_int = [0x42, 0, 0x0D, 0x02, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(Item::decode(&bad_int), Err(TtlvError::BadLength { .. })));
        // A length far past the input.
        let huge = [0x42, 0, 0x0D, 0x08, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(Item::decode(&huge), Err(TtlvError::Truncated));
        // Unknown type, bad boolean, bad UTF-8.
        assert_eq!(
            Item::decode(&[0x42, 0, 1, 0x0C, 0, 0, 0, 0]),
            Err(TtlvError::UnknownType(0x0C))
        );
        assert_eq!(
            Item::decode(&[0x42, 0, 1, 0x06, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2]),
            Err(TtlvError::BadBoolean)
        );
        assert_eq!(
            Item::decode(&[0x42, 0, 1, 0x07, 0, 0, 0, 1, 0xFF, 0, 0, 0, 0, 0, 0, 0]),
            Err(TtlvError::BadText)
        );
        // A child that runs past its structure.
        let overrun = [
            0x42, 0, 1, 0x01, 0, 0, 0, 8, // structure of 8 bytes...
            0x42, 0, 2, 0x02, 0, 0, 0,
            4, // ...holding an integer header whose value is outside
            0, 0, 0, 1, 0, 0, 0, 0,
        ];
        assert!(Item::decode(&overrun).is_err());
        // Deep nesting.
        let mut deep = Item::integer(0x420001, 1);
        for _ in 0..=MAX_DEPTH {
            deep = Item::structure(0x420001, vec![deep]);
        }
        assert_eq!(Item::decode(&deep.encode().unwrap()), Err(TtlvError::TooDeep));
        assert_eq!(Item::integer(0x0100_0000, 1).encode(), Err(TtlvError::BadTag(0x0100_0000)));
    }

    #[test]
    fn byte_strings_are_not_printed() {
        let item = Item::bytes(0x4200C2, b"secret key bytes");
        assert!(!format!("{item:?}").contains("secret"));
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i32>().prop_map(Value::Integer),
            any::<i64>().prop_map(Value::LongInteger),
            proptest::collection::vec(any::<[u8; 8]>(), 0..3)
                .prop_map(|chunks| Value::BigInteger(chunks.concat())),
            any::<u32>().prop_map(Value::Enumeration),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,20}".prop_map(Value::TextString),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| Value::ByteString(Zeroizing::new(b))),
            any::<i64>().prop_map(Value::DateTime),
            any::<u32>().prop_map(Value::Interval),
            any::<i64>().prop_map(Value::DateTimeExtended),
        ]
    }

    fn item() -> impl Strategy<Value = Item> {
        let leaf_item = (0u32..0x0100_0000, leaf()).prop_map(|(tag, value)| Item { tag, value });
        leaf_item.prop_recursive(4, 32, 6, |inner| {
            (0u32..0x0100_0000, proptest::collection::vec(inner, 0..6))
                .prop_map(|(tag, items)| Item::structure(tag, items))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Item::decode(&bytes);
        }

        #[test]
        fn random_bytes_behind_a_valid_header_never_panic(
            kind in 1u8..=0x0C,
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut bytes = vec![0x42, 0x00, 0x7B, kind];
            bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
            bytes.extend_from_slice(&body);
            bytes.resize(8 + padded(body.len()), 0);
            let _ = Item::decode(&bytes);
        }

        #[test]
        fn encode_then_decode_round_trips(item in item()) {
            let encoded = item.encode().unwrap();
            prop_assert_eq!(encoded.len() % 8, 0);
            prop_assert_eq!(Item::decode(&encoded).unwrap(), item);
        }

        #[test]
        fn mutated_encodings_never_panic(item in item(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
            let mut encoded = item.encode().unwrap().to_vec();
            for (at, byte) in flips {
                let len = encoded.len();
                if let Some(b) = encoded.get_mut(at % len) {
                    *b ^= byte;
                }
            }
            let _ = Item::decode(&encoded);
        }
    }
}

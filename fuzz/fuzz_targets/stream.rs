//! `stream`: the Keyhold encrypted-stream format (`KHF` v1, `keyhold_core::stream`).
//!
//! 1. The input, as raw bytes, is a stream decrypted under a fixed DEK (`42`×32): once with
//!    `decrypt_all`, and again the way `keyhold decrypt` reads a file — `StreamHeader::parse`
//!    on a growing prefix (following `NeedMore`), then `StreamDecryptor::update` in chunks of 1,
//!    13 and 4096 bytes, then `finish`. Nothing panics, `NeedMore` always asks for more than it
//!    had, a parsed header re-encodes to exactly the bytes it was read from, and every chunking
//!    gives the same result as `decrypt_all`.
//! 2. The same input, read as structured data (`arbitrary`: DEK, tenant, EDEK, segment size,
//!    plaintext, chunk boundaries): encrypt with `StreamEncryptor` fed in arbitrary pieces,
//!    decrypt with `StreamDecryptor` fed in other arbitrary pieces → the plaintext; the length
//!    is header + plaintext + 16 per segment; a truncated stream, a flipped byte or another
//!    tenant is refused.
#![no_main]

use std::num::NonZeroU8;

use arbitrary::{Arbitrary, Unstructured};
use keyhold_core::Dek;
use keyhold_core::document::MAX_TENANT_ID_LEN;
use keyhold_core::stream::{
    HeaderParse, MAX_EDEK_LEN, MIN_SEGMENT_SIZE, StreamDecryptor, StreamEncryptor, StreamError,
    StreamHeader, decrypt_all,
};
use libfuzzer_sys::fuzz_target;

const TAG_LEN: usize = 16;

fn fixed_dek() -> Dek {
    Dek::from_bytes([0x42; 32])
}

/// Reads the header as `keyhold decrypt` does: parse, and on `NeedMore(n)` read up to `n`.
fn read_header(data: &[u8]) -> Result<(StreamHeader, usize), StreamError> {
    let mut have = 0;
    loop {
        match StreamHeader::parse(&data[..have])? {
            HeaderParse::Complete(header, used) => {
                assert_eq!(used, have, "header complete before the bytes it asked for");
                return Ok((header, used));
            }
            HeaderParse::NeedMore(n) => {
                assert!(n > have, "NeedMore({n}) with {have} bytes already there");
                if n > data.len() {
                    return Err(StreamError::Truncated);
                }
                have = n;
            }
        }
    }
}

fn decrypt_in_chunks(
    dek: &Dek,
    data: &[u8],
    tenant: Option<&str>,
    mut chunk: impl FnMut() -> usize,
) -> Result<Vec<u8>, StreamError> {
    let (header, used) = read_header(data)?;
    let mut dec = StreamDecryptor::new(dek, &header, tenant)?;
    let mut out = Vec::new();
    let mut rest = &data[used..];
    while !rest.is_empty() {
        let (piece, later) = rest.split_at(chunk().clamp(1, rest.len()));
        dec.update(piece, &mut out)?;
        rest = later;
    }
    dec.finish(&mut out)?;
    Ok(out)
}

fn raw_stream(data: &[u8]) {
    let dek = fixed_dek();
    let whole = decrypt_all::<()>(data, None, |_| Ok(dek.clone())).expect("infallible DEK");
    match StreamHeader::parse(data) {
        Ok(HeaderParse::Complete(header, used)) => {
            assert_eq!(header.encode().expect("parsed header encodes"), &data[..used]);
            assert_eq!(read_header(data), Ok((header.clone(), used)));
            let other = format!("{}x", header.tenant_id);
            let wrong = decrypt_all::<()>(data, Some(&other), |_| Ok(dek.clone()));
            assert_eq!(wrong, Ok(Err(StreamError::TenantMismatch)));
        }
        Ok(HeaderParse::NeedMore(n)) => {
            assert!(n > data.len());
            assert_eq!(whole, Err(StreamError::Truncated));
        }
        Err(e) => assert_eq!(whole.as_ref(), Err(&e)),
    }
    for size in [1, 13, 4096] {
        let chunked = decrypt_in_chunks(&dek, data, None, || size);
        assert_eq!(chunked, whole, "chunks of {size} disagree with decrypt_all");
    }
}

#[derive(Debug, Arbitrary)]
struct RoundTrip {
    dek: [u8; 32],
    tenant: String,
    edek: Vec<u8>,
    segment_size: u16,
    plaintext: Vec<u8>,
    enc_chunks: Vec<u16>,
    dec_chunks: Vec<u16>,
    cut: u16,
    flip_at: u16,
    flip_mask: NonZeroU8,
}

fn cycle(sizes: &[u16]) -> impl FnMut() -> usize + '_ {
    let mut i = 0;
    move || {
        let size = sizes.get(i % sizes.len().max(1)).map_or(usize::MAX, |&s| usize::from(s));
        i += 1;
        size
    }
}

fn round_trip(input: RoundTrip) {
    let dek = Dek::from_bytes(input.dek);
    // Small segments, so that short inputs make many of them; also the edges 16 and 17.
    let segment_size = MIN_SEGMENT_SIZE + u32::from(input.segment_size % 300);
    let created = StreamEncryptor::new(&dek, &input.tenant, &input.edek, segment_size);
    let valid = !input.tenant.is_empty()
        && input.tenant.len() <= MAX_TENANT_ID_LEN
        && !input.edek.is_empty()
        && input.edek.len() <= MAX_EDEK_LEN;
    let (mut enc, mut sealed) = match created {
        Ok(pair) => pair,
        Err(e) => {
            assert!(!valid, "valid parameters refused: {e}");
            assert_eq!(e, StreamError::InvalidParameters);
            return;
        }
    };
    assert!(valid, "invalid parameters accepted");
    let header_len = sealed.len();
    let mut next = cycle(&input.enc_chunks);
    let mut rest = input.plaintext.as_slice();
    while !rest.is_empty() {
        let (piece, later) = rest.split_at(next().clamp(1, rest.len()));
        enc.update(piece, &mut sealed).expect("update");
        rest = later;
    }
    enc.finish(&mut sealed).expect("finish");

    let seg = segment_size as usize;
    let segments = input.plaintext.len().div_ceil(seg).max(1);
    assert_eq!(sealed.len(), header_len + input.plaintext.len() + segments * TAG_LEN);
    let (header, used) = read_header(&sealed).expect("own header parses");
    assert_eq!(used, header_len);
    assert_eq!(header.tenant_id, input.tenant);
    assert_eq!(header.edek, input.edek);
    assert_eq!(header.segment_size, segment_size);

    let tenant = Some(input.tenant.as_str());
    let back = decrypt_in_chunks(&dek, &sealed, tenant, cycle(&input.dec_chunks));
    assert_eq!(back.as_ref(), Ok(&input.plaintext), "round trip");

    // Cut anywhere before the end: refused (never a shorter plaintext).
    let cut = usize::from(input.cut) % sealed.len();
    let truncated = decrypt_all::<()>(&sealed[..cut], tenant, |_| Ok(dek.clone()));
    assert!(matches!(truncated, Ok(Err(_))), "stream cut at {cut} of {} accepted", sealed.len());

    // One changed byte: refused.
    let mut flipped = sealed.clone();
    let i = usize::from(input.flip_at) % flipped.len();
    flipped[i] ^= input.flip_mask.get();
    let result = decrypt_in_chunks(&dek, &flipped, None, cycle(&input.dec_chunks));
    assert!(result.is_err(), "flipped byte {i} of {} accepted", flipped.len());

    // Another tenant: refused before any segment is read.
    let other = format!("{}x", input.tenant);
    let wrong = decrypt_in_chunks(&dek, &sealed, Some(&other), || usize::MAX);
    assert_eq!(wrong, Err(StreamError::TenantMismatch));
}

fuzz_target!(|data: &[u8]| {
    raw_stream(data);
    if let Ok(input) = RoundTrip::arbitrary_take_rest(Unstructured::new(data)) {
        round_trip(input);
    }
});

#!/usr/bin/env python3
"""Independent reference for the Keyhold encrypted-field format v1 (docs/formats.md).

Written from the spec, not from the Rust code, with the `cryptography` package; prints the
known-answer vector that `document::tests::known_answer_fixed_iv` pins
(DEK = 0x42 * 32, tenant "tenant-kat", field "field", plaintext "hello", IV = 0x07 * 12).
"""
import struct
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        h = hmac.HMAC(prk, hashes.SHA256())
        h.update(block + info + bytes([i]))
        block = h.finalize()
        out += block
        i += 1
    return out[:length]


def encrypt_field(dek: bytes, tenant: str, name: str, plaintext: bytes, iv: bytes) -> bytes:
    t = tenant.encode()
    prk = hkdf_extract(b"keyhold/document/v1", dek)
    key = hkdf_expand(prk, b"keyhold/document/v1/encrypt\0" + t, 32)
    commitment = hkdf_expand(prk, b"keyhold/document/v1/commit\0" + t, 32)
    header = b"KHD" + bytes([1, 1]) + struct.pack(">H", len(t)) + t + commitment
    aad = header + struct.pack(">I", len(name.encode())) + name.encode()
    return header + iv + AESGCM(key).encrypt(iv, plaintext, aad)


if __name__ == "__main__":
    print(encrypt_field(b"\x42" * 32, "tenant-kat", "field", b"hello", b"\x07" * 12).hex())

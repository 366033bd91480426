// Seals a credential to the proxy fleet's public key in the browser, before it leaves the
// tenant admin's machine (docs/broker.md §1). The broker stores the blob; only a proxy opens it
// (keyhold_core::seal::open).
//
// HPKE (RFC 9180), base mode, single shot: DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
// AES-256-GCM. Written from the RFC's pseudo-code with WebCrypto only: no dependencies, no build.
// The blob: khs1.<key id>.<base64url, no padding, of enc ‖ ciphertext>.

const subtle = globalThis.crypto.subtle;
const utf8 = new TextEncoder();

const INFO = utf8.encode('keyhold sealed secret v1');
const PURPOSES = ['kms', 'siem'];
// The proxy refuses larger plaintexts (keyhold_core::seal::MAX_PLAINTEXT): refuse them here, where
// the admin can still be told.
const MAX_PLAINTEXT = 64 * 1024;
const NH = 32; // HKDF-SHA256 output length
const NN = 12; // AES-GCM nonce length
const NSECRET = 32; // DHKEM(X25519) shared secret length
const KEM_ID = 0x0020; // DHKEM(X25519, HKDF-SHA256)
const KDF_ID = 0x0001; // HKDF-SHA256
// The AEAD is a parameter inside this file only so that RFC 9180's published vectors (which use
// AES-128-GCM) can check it: its id is part of the key schedule's suite_id, its Nk the key length.
const AES_256_GCM = Object.freeze({ id: 0x0002, nk: 32 });
const AES_128_GCM = Object.freeze({ id: 0x0001, nk: 16 });

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// I2OSP(n, w): n as a w-byte big-endian string.
function i2osp(n, w) {
  const out = new Uint8Array(w);
  for (let i = w - 1; i >= 0; i--, n = Math.floor(n / 256)) out[i] = n % 256;
  return out;
}

// suite_id inside the KEM (§4.1); the key schedule's ("HPKE" ‖ 3 ids) is built in setupBaseS.
const KEM_SUITE_ID = concat(utf8.encode('KEM'), i2osp(KEM_ID, 2));

async function hmacSha256(key, data) {
  const k = await subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return new Uint8Array(await subtle.sign('HMAC', k, data));
}

// HKDF-Extract (RFC 5869) by hand: WebCrypto's HKDF runs extract and expand as one step, and
// HPKE labels each separately. An empty salt means NH zero bytes (RFC 5869 §2.2); it must be
// spelled out because WebCrypto refuses a zero-length HMAC key (HMAC pads short keys with zeros,
// so the two are the same key).
function extract(salt, ikm) {
  return hmacSha256(salt.length === 0 ? new Uint8Array(NH) : salt, ikm);
}

// HKDF-Expand (RFC 5869): T(i) = HMAC(prk, T(i-1) ‖ info ‖ i), output the first L bytes.
async function expand(prk, info, length) {
  if (length > 255 * NH) throw new Error('HKDF-Expand: output too long');
  const out = new Uint8Array(length);
  let t = new Uint8Array(0);
  for (let i = 1, at = 0; at < length; i++, at += NH) {
    t = await hmacSha256(prk, concat(t, info, Uint8Array.of(i)));
    out.set(t.subarray(0, Math.min(NH, length - at)), at);
  }
  return out;
}

// RFC 9180 §4: every KDF call is labelled with "HPKE-v1", the suite and the step's name.
function labeledExtract(suiteId, salt, label, ikm) {
  return extract(salt, concat(utf8.encode('HPKE-v1'), suiteId, utf8.encode(label), ikm));
}

function labeledExpand(suiteId, prk, label, info, length) {
  const labeledInfo = concat(
    i2osp(length, 2),
    utf8.encode('HPKE-v1'),
    suiteId,
    utf8.encode(label),
    info,
  );
  return expand(prk, labeledInfo, length);
}

// RFC 9180 §4.1 Encap, with the ephemeral key pair given (a WebCrypto CryptoKeyPair) so that a
// test can fix it.
async function encap(pkRm, ephemeral) {
  const pkR = await subtle.importKey('raw', pkRm, { name: 'X25519' }, false, []);
  let dh;
  try {
    const dhParams = { name: 'X25519', public: pkR };
    dh = new Uint8Array(await subtle.deriveBits(dhParams, ephemeral.privateKey, 256));
  } catch (cause) {
    // WebCrypto's X25519 fails (OperationError) when the shared secret is all zeros, i.e. for a
    // small-order public key: the check RFC 9180 §7.1.4 asks for. Say which input was wrong.
    throw new Error('fleet public key: not a usable X25519 key (small order)', { cause });
  }
  const enc = new Uint8Array(await subtle.exportKey('raw', ephemeral.publicKey));
  const kemContext = concat(enc, pkRm);
  const eaePrk = await labeledExtract(KEM_SUITE_ID, new Uint8Array(0), 'eae_prk', dh);
  const sharedSecret = await labeledExpand(
    KEM_SUITE_ID,
    eaePrk,
    'shared_secret',
    kemContext,
    NSECRET,
  );
  return { sharedSecret, enc };
}

// RFC 9180 §5.1 SetupBaseS: Encap, then the key schedule in mode_base (empty psk and psk_id).
async function setupBaseS(pkRm, info, aead, ephemeral) {
  const { sharedSecret, enc } = await encap(pkRm, ephemeral);
  const suiteId = concat(
    utf8.encode('HPKE'),
    i2osp(KEM_ID, 2),
    i2osp(KDF_ID, 2),
    i2osp(aead.id, 2),
  );
  const none = new Uint8Array(0);
  const pskIdHash = await labeledExtract(suiteId, none, 'psk_id_hash', none);
  const infoHash = await labeledExtract(suiteId, none, 'info_hash', info);
  const context = concat(Uint8Array.of(0x00), pskIdHash, infoHash); // mode_base = 0x00
  const secret = await labeledExtract(suiteId, sharedSecret, 'secret', none);
  const key = await labeledExpand(suiteId, secret, 'key', context, aead.nk);
  const baseNonce = await labeledExpand(suiteId, secret, 'base_nonce', context, NN);
  return { enc, sharedSecret, key, baseNonce };
}

// ContextS.Seal for the first (and only) message: sequence number 0, so the nonce is base_nonce
// itself (base_nonce XOR 0). WebCrypto's AES-GCM output is ciphertext ‖ 16-byte tag, as HPKE's.
async function sealFirst(ctx, aad, plaintext) {
  const key = await subtle.importKey('raw', ctx.key, { name: 'AES-GCM' }, false, ['encrypt']);
  const params = { name: 'AES-GCM', iv: ctx.baseNonce, additionalData: aad, tagLength: 128 };
  return new Uint8Array(await subtle.encrypt(params, key, plaintext));
}

function fromBase64(text) {
  let binary;
  try {
    binary = atob(String(text).trim());
  } catch {
    throw new Error('fleet public key: not base64');
  }
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function toBase64Url(bytes) {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');
}

function fleetPublicKey(publicKeyBase64) {
  const key = fromBase64(publicKeyBase64);
  if (key.length !== 32) throw new Error(`fleet public key: ${key.length} bytes, not 32`);
  return key;
}

/** The key id of a fleet public key (standard base64): SHA-256 of its 32 bytes, first 8, hex. */
export async function keyId(publicKeyBase64) {
  const digest = new Uint8Array(await subtle.digest('SHA-256', fleetPublicKey(publicKeyBase64)));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Seals `plaintext` (a string, normally the JSON object of the secret fields) to the fleet public
 * key for `tenantId` and `purpose` ("kms" or "siem"): returns `khs1.<key id>.<base64url>`.
 */
export async function seal(publicKeyBase64, purpose, tenantId, plaintext) {
  const pkRm = fleetPublicKey(publicKeyBase64);
  if (!PURPOSES.includes(purpose)) throw new Error(`purpose: ${purpose} is not kms or siem`);
  if (typeof tenantId !== 'string' || tenantId === '') throw new Error('tenant id: missing');
  if (typeof plaintext !== 'string') throw new Error('plaintext: not a string');
  const pt = utf8.encode(plaintext);
  if (pt.length > MAX_PLAINTEXT) {
    throw new Error(`a sealed secret holds at most ${MAX_PLAINTEXT} bytes`);
  }
  // A fresh ephemeral key for every blob; its private half never leaves WebCrypto.
  const ephemeral = await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
  const ctx = await setupBaseS(pkRm, INFO, AES_256_GCM, ephemeral);
  const ciphertext = await sealFirst(ctx, utf8.encode(`${purpose}\n${tenantId}`), pt);
  return `khs1.${await keyId(publicKeyBase64)}.${toBase64Url(concat(ctx.enc, ciphertext))}`;
}

// For this directory's tests only (the RFC 9180 test vector fixes the ephemeral key): pages use
// seal() and keyId(). Never seal a credential with a chosen ephemeral key.
export const internalsForTests = Object.freeze({ setupBaseS, sealFirst, AES_128_GCM, AES_256_GCM });

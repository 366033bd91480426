// node --test crates/keyhold-broker/ui/tests/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { internalsForTests, keyId, seal } from '../seal.js';

const { setupBaseS, sealFirst, AES_128_GCM } = internalsForTests;
const subtle = globalThis.crypto.subtle;

const hex = (s) => Uint8Array.from(s.match(/../g), (h) => parseInt(h, 16));
const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
const b64 = (bytes) => btoa(String.fromCharCode(...bytes));

// RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, mode_base
// (values copied from the RFC's text).
const A_1_1 = {
  info: '4f6465206f6e2061204772656369616e2055726e',
  skEm: '52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736',
  pkEm: '37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431',
  pkRm: '3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d',
  enc: '37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431',
  sharedSecret: 'fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc',
  key: '4531685d41d65f03dc48f6b8302c05b0',
  baseNonce: '56d890e5accaaf011cff4b7d',
  // Encryptions, sequence number 0.
  pt: '4265617574792069732074727574682c20747275746820626561757479',
  aad: '436f756e742d30',
  ct:
    'f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9' +
    '6d8770ac83d07bea87e13c512a',
};

// The vector's ephemeral key as WebCrypto holds one. WebCrypto imports no raw X25519 private
// key: PKCS#8 (RFC 8410) is the 16-byte header then the 32 bytes. The public half is not
// imported from the vector but read back from the private key (a JWK export carries it), so
// `enc` really is computed.
async function vectorEphemeral(skEm) {
  const pkcs8 = new Uint8Array([...hex('302e020100300506032b656e04220420'), ...hex(skEm)]);
  const x25519 = { name: 'X25519' };
  // A private key needs a usage to be imported at all; a public key must have none.
  const privateKey = await subtle.importKey('pkcs8', pkcs8, x25519, true, ['deriveBits']);
  const { x } = await subtle.exportKey('jwk', privateKey);
  const jwk = { kty: 'OKP', crv: 'X25519', x };
  const publicKey = await subtle.importKey('jwk', jwk, x25519, true, []);
  return { privateKey, publicKey };
}

test('RFC 9180 A.1.1: enc, shared secret, key, base nonce, first ciphertext', async () => {
  const v = A_1_1;
  const ephemeral = await vectorEphemeral(v.skEm);
  const ctx = await setupBaseS(hex(v.pkRm), hex(v.info), AES_128_GCM, ephemeral);
  assert.equal(toHex(ctx.enc), v.enc);
  assert.equal(toHex(ctx.enc), v.pkEm);
  assert.equal(toHex(ctx.sharedSecret), v.sharedSecret);
  assert.equal(toHex(ctx.key), v.key);
  assert.equal(toHex(ctx.baseNonce), v.baseNonce);
  assert.equal(toHex(await sealFirst(ctx, hex(v.aad), hex(v.pt))), v.ct);
});

async function fleetKey() {
  const pair = await subtle.generateKey({ name: 'X25519' }, true, ['deriveBits']);
  return b64(new Uint8Array(await subtle.exportKey('raw', pair.publicKey)));
}

test('key id: first 8 bytes of SHA-256 of the public key, hex', async () => {
  // SHA-256 of 32 zero bytes is 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925.
  assert.equal(await keyId(b64(new Uint8Array(32))), '66687aadf862bd77');
  const key = await fleetKey();
  const raw = Uint8Array.from(atob(key), (c) => c.charCodeAt(0));
  const digest = new Uint8Array(await subtle.digest('SHA-256', raw));
  assert.equal(await keyId(key), toHex(digest.subarray(0, 8)));
  assert.match(await keyId(key), /^[0-9a-f]{16}$/);
});

test('blob: khs1.<key id>.<base64url without padding of enc ‖ ciphertext>', async () => {
  const key = await fleetKey();
  const plaintext = '{"secret_access_key":"wJalrXUtnFEMI/K7MDENG"}';
  const blob = await seal(key, 'kms', 'acme', plaintext);
  const [prefix, id, body, ...rest] = blob.split('.');
  assert.equal(prefix, 'khs1');
  assert.equal(id, await keyId(key));
  assert.deepEqual(rest, []);
  assert.match(body, /^[A-Za-z0-9_-]+$/); // base64url alphabet, no '=' padding
  const padding = '='.repeat((4 - (body.length % 4)) % 4);
  const bytes = atob(body.replaceAll('-', '+').replaceAll('_', '/') + padding);
  // enc (32) ‖ ciphertext (as long as the plaintext) ‖ tag (16).
  assert.equal(bytes.length, 32 + new TextEncoder().encode(plaintext).length + 16);
});

test('two seals of the same secret differ (fresh ephemeral key)', async () => {
  const key = await fleetKey();
  const a = await seal(key, 'siem', 'acme', '{"token":"t"}');
  const b = await seal(key, 'siem', 'acme', '{"token":"t"}');
  assert.notEqual(a, b);
  assert.notEqual(a.split('.')[2].slice(0, 43), b.split('.')[2].slice(0, 43)); // enc differs
});

test('refuses a public key that is not 32 bytes, or not base64', async () => {
  for (const bad of [b64(new Uint8Array(31)), b64(new Uint8Array(33)), '', 'not base64!']) {
    await assert.rejects(seal(bad, 'kms', 'acme', 'x'), /fleet public key/, JSON.stringify(bad));
    await assert.rejects(keyId(bad), /fleet public key/, JSON.stringify(bad));
  }
});

test('refuses a small-order public key (all-zero shared secret)', async () => {
  // 0 and 1 are points of small order (RFC 7748 §6.1 asks to refuse the all-zero result).
  const one = new Uint8Array(32);
  one[0] = 1;
  for (const point of [new Uint8Array(32), one]) {
    await assert.rejects(seal(b64(point), 'kms', 'acme', 'x'), /fleet public key: .*small order/);
  }
});

test('refuses a bad purpose, an empty tenant, a non-string or oversize plaintext', async () => {
  const key = await fleetKey();
  await assert.rejects(seal(key, 'KMS', 'acme', 'x'), /purpose/);
  await assert.rejects(seal(key, 'kms', '', 'x'), /tenant/);
  await assert.rejects(seal(key, 'kms', 'acme', new Uint8Array(1)), /plaintext/);
  await assert.rejects(seal(key, 'kms', 'acme', 'x'.repeat(64 * 1024 + 1)), /at most/);
  assert.ok(await seal(key, 'kms', 'acme', 'x'.repeat(64 * 1024)));
});

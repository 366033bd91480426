//! Transform encryption: the unidirectional, multi-hop proxy re-encryption scheme of H. Wang and
//! Z. Cao ("A Fully Secure Unidirectional and Multi-user Proxy Re-encryption Scheme", ACM CCS
//! 2009), in the form B. Wall and P. Walsh give it ("Cryptographically Enforced Orthogonal Access
//! Control at Scale", SCC 2018), on the BLS12-381 pairing of `blst`.
//!
//! Notation (G_T written additively, as `blstrs` does): `g1`, `g2` the generators, `e` the
//! optimal ate pairing, `H2` hash-to-G2 (RFC 9380, `BLS12381G2_XMD:SHA-256_SSWU_RO_`).
//!
//! - key pair: `sk` random in Z_q, `pk = sk·g1`
//! - encrypt `m ∈ G_T` to `pk`: random `r`; `(E, C) = (r·g1, m + e(r·pk, g2))`
//! - decrypt level 1: `m = C − e(sk·E, g2)`
//! - transform key `i → j`: random `K ∈ G_T`, random `s`;
//!   `(S, K') = (s·g1, K + e(s·pk_j, g2))` (K encrypted to j), `h = H2(K) − sk_i·g2`
//! - transform `(E, C)`: `C ← C + e(E, h)`; append the block `(S, K')`. The result is
//!   `m + e(E, H2(K))`: only someone who recovers `K`, that is `j`, can remove the mask.
//! - a further hop `j → k` applies the next key to the last block, which is itself an
//!   encryption to `j`: `K'_last ← K'_last + e(S_last, h_jk)`, then appends its own block.
//! - decrypt level n: recover the last block's `K` with `sk`, then each earlier block's `K` with
//!   `H2` of the one after it, then `m = C − e(E, H2(K_1))`.
//!
//! Every value carries an authentication hash `SHA-256(domain ‖ E ‖ m)` (as in Wall and Walsh)
//! that the final reader checks, so a transform with a wrong key fails loudly instead of
//! producing a wrong plaintext. docs/e2e-crypto.md has the security argument and its limits.

use std::sync::LazyLock;

use blstrs::{
    Bls12, Compress as _, G1Affine, G1Projective, G2Affine, G2Prepared, G2Projective, Gt, Scalar,
    pairing,
};
use ff::Field as _;
use group::prime::PrimeCurveAffine as _;
use group::{Curve as _, Group as _};
use pairing_lib::{MillerLoopResult as _, MultiMillerLoop as _};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// Domain separation tag of `H2`, the hash from G_T to G2 (RFC 9380 suite
/// `BLS12381G2_XMD:SHA-256_SSWU_RO_`).
pub const HASH_TO_G2_DST: &[u8] = b"KEYHOLD-E2E-V1-TRANSFORM_BLS12381G2_XMD:SHA-256_SSWU_RO_";
const AUTH_HASH_DOMAIN: &[u8] = b"keyhold-e2e-v1 auth-hash";

/// Bytes of a compressed G1 point (public keys, ephemeral keys).
pub const G1_LEN: usize = 48;
/// Bytes of a compressed G2 point.
pub const G2_LEN: usize = 96;
/// Bytes of a compressed G_T element (torus compression, blstrs' `Compress`).
pub const GT_LEN: usize = 288;
/// Most transform hops one value may carry (group → user → device is two).
pub const MAX_HOPS: usize = 8;
const VALUE_VERSION: u8 = 1;
const TRANSFORM_KEY_VERSION: u8 = 1;

/// What can go wrong in transform encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreError {
    /// Bytes that are not a valid encoding (wrong length, a point not on the curve or not in the
    /// prime-order subgroup, the identity where a key is required, an unknown version).
    #[error("malformed transform-encryption value: {0}")]
    Malformed(&'static str),
    /// The authentication hash did not match: a wrong private key, a wrong or foreign transform
    /// key, or an altered value.
    #[error("decryption failed: wrong key or altered value")]
    Decrypt,
    /// More hops than [`MAX_HOPS`].
    #[error("too many transform hops")]
    TooManyHops,
}

/// A transform-encryption private key: a scalar in Z_q. Wiped on drop.
pub struct PrivateKey(Zeroizing<[u8; 32]>);

impl PrivateKey {
    /// A fresh random key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        loop {
            let s = Scalar::random(&mut *rng);
            if !bool::from(s.is_zero()) {
                return Self(Zeroizing::new(s.to_bytes_le()));
            }
        }
    }

    /// The key from its 32 little-endian bytes; zero or out of range is refused.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, PreError> {
        let s = Option::<Scalar>::from(Scalar::from_bytes_le(bytes))
            .ok_or(PreError::Malformed("private key out of range"))?;
        if bool::from(s.is_zero()) {
            return Err(PreError::Malformed("zero private key"));
        }
        Ok(Self(Zeroizing::new(*bytes)))
    }

    /// The 32 little-endian bytes, for sealing under another key. Keep them wrapped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.0.clone()
    }

    fn scalar(&self) -> Scalar {
        // Checked at construction.
        Option::from(Scalar::from_bytes_le(&self.0)).unwrap_or(Scalar::ZERO)
    }

    /// `sk·g1`.
    pub fn public_key(&self) -> PublicKey {
        PublicKey((G1Projective::generator() * self.scalar()).to_affine())
    }
}

impl core::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PrivateKey([REDACTED])")
    }
}

/// A transform-encryption public key: a point of G1 other than the identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(G1Affine);

impl PublicKey {
    /// The 48-byte compressed point.
    pub fn to_bytes(&self) -> [u8; G1_LEN] {
        self.0.to_compressed()
    }

    /// Parses a compressed point; refuses the identity and points outside the subgroup.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PreError> {
        read_g1(bytes).map(Self)
    }
}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey({})", hex_prefix(&self.to_bytes()))
    }
}

/// A message of the scheme: a random element of G_T. Documents are not encrypted with it
/// directly; their AES key is derived from it ([`Plaintext::derive_key`]).
pub struct Plaintext(Gt);

impl Plaintext {
    /// A fresh random element (never the identity).
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        loop {
            let m = Gt::random(&mut *rng);
            if !bool::from(m.is_identity()) {
                return Self(m);
            }
        }
    }

    /// A 256-bit key: HKDF-SHA-256 of the element's compressed bytes, with `info` naming its use.
    pub fn derive_key(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let ikm = gt_bytes(&self.0);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA-256 output length.
        let _ = hkdf::Hkdf::<Sha256>::new(Some(b"keyhold-e2e-v1"), ikm.as_slice())
            .expand(info, out.as_mut_slice());
        out
    }
}

impl PartialEq for Plaintext {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl core::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Plaintext([REDACTED])")
    }
}

/// One hop's block: the transform key's temporary key `K`, encrypted to the hop's target.
#[derive(Clone, PartialEq, Eq, Debug)]
struct TransformBlock {
    ephemeral: G1Affine,
    encrypted_temp_key: Gt,
}

/// A [`Plaintext`] encrypted to one public key, possibly transformed since (one block per hop).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EncryptedValue {
    ephemeral: G1Affine,
    body: Gt,
    auth_hash: [u8; 32],
    blocks: Vec<TransformBlock>,
}

/// A transform key from one key pair to another. Holding it lets a server move values
/// encrypted to `from` to `to`, and nothing else: it never decrypts them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TransformKey {
    from: PublicKey,
    to: PublicKey,
    ephemeral: G1Affine,
    encrypted_temp_key: Gt,
    hashed_temp_key: G2Affine,
}

/// Encrypts `m` to `to` (level 1).
pub fn encrypt(
    m: &Plaintext,
    to: &PublicKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> EncryptedValue {
    let r = nonzero_scalar(rng);
    let ephemeral = (G1Projective::generator() * r).to_affine();
    let mask = pair_with_g2(&(G1Projective::from(to.0) * r).to_affine());
    EncryptedValue {
        ephemeral,
        body: m.0 + mask,
        auth_hash: auth_hash(&ephemeral, &m.0),
        blocks: Vec::new(),
    }
}

/// A transform key `from → to`, made by the holder of `from`'s private key.
pub fn transform_key(
    from: &PrivateKey,
    to: &PublicKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> TransformKey {
    let temp_key = Plaintext::generate(rng);
    let s = nonzero_scalar(rng);
    let ephemeral = (G1Projective::generator() * s).to_affine();
    let encrypted_temp_key = temp_key.0 + pair_with_g2(&(G1Projective::from(to.0) * s).to_affine());
    let hashed_temp_key =
        (hash_to_g2(&temp_key.0) - G2Projective::generator() * from.scalar()).to_affine();
    TransformKey {
        from: from.public_key(),
        to: *to,
        ephemeral,
        encrypted_temp_key,
        hashed_temp_key,
    }
}

impl TransformKey {
    /// Whose values this key transforms.
    pub fn from_key(&self) -> &PublicKey {
        &self.from
    }

    /// To whom.
    pub fn to_key(&self) -> &PublicKey {
        &self.to
    }
}

/// Moves `value`, encrypted (or last transformed) to `key.from`, to `key.to`. The server runs
/// this; it learns nothing about the plaintext. The caller must have checked that the value is
/// addressed to `key.from` (see [`crate::access`]): a mismatched key yields a value nobody can
/// decrypt, which the reader detects.
pub fn transform(value: &EncryptedValue, key: &TransformKey) -> Result<EncryptedValue, PreError> {
    if value.blocks.len() >= MAX_HOPS {
        return Err(PreError::TooManyHops);
    }
    let mut out = value.clone();
    match out.blocks.last_mut() {
        None => out.body += pairing(&out.ephemeral, &key.hashed_temp_key),
        Some(last) => last.encrypted_temp_key += pairing(&last.ephemeral, &key.hashed_temp_key),
    }
    out.blocks.push(TransformBlock {
        ephemeral: key.ephemeral,
        encrypted_temp_key: key.encrypted_temp_key,
    });
    Ok(out)
}

/// Decrypts a value addressed (directly or by transforms) to `key`.
pub fn decrypt(value: &EncryptedValue, key: &PrivateKey) -> Result<Plaintext, PreError> {
    let sk = key.scalar();
    let level1 = |ephemeral: &G1Affine, body: &Gt| {
        *body - pair_with_g2(&(G1Projective::from(*ephemeral) * sk).to_affine())
    };
    let m = match value.blocks.split_last() {
        None => level1(&value.ephemeral, &value.body),
        Some((last, earlier)) => {
            let mut temp_key = level1(&last.ephemeral, &last.encrypted_temp_key);
            for block in earlier.iter().rev() {
                temp_key = unmask(&block.ephemeral, &block.encrypted_temp_key, &temp_key)?;
            }
            unmask(&value.ephemeral, &value.body, &temp_key)?
        }
    };
    if bool::from(auth_hash(&value.ephemeral, &m).ct_eq(&value.auth_hash)) {
        Ok(Plaintext(m))
    } else {
        Err(PreError::Decrypt)
    }
}

/// `body − e(ephemeral, H2(temp_key))`.
fn unmask(ephemeral: &G1Affine, body: &Gt, temp_key: &Gt) -> Result<Gt, PreError> {
    if bool::from(temp_key.is_identity()) {
        // Only a forged block yields the identity; H2 needs a compressible element.
        return Err(PreError::Decrypt);
    }
    Ok(*body - pairing(ephemeral, &hash_to_g2(temp_key).to_affine()))
}

/// The G2 generator with its Miller-loop lines computed once: pairings with it are the most
/// frequent (every encrypt, transform key and decrypt) and about 15 % cheaper this way.
static G2_GENERATOR: LazyLock<G2Prepared> =
    LazyLock::new(|| G2Prepared::from(G2Affine::generator()));

/// `e(p, g2)`.
fn pair_with_g2(p: &G1Affine) -> Gt {
    Bls12::multi_miller_loop(&[(p, &*G2_GENERATOR)]).final_exponentiation()
}

fn hash_to_g2(k: &Gt) -> G2Projective {
    G2Projective::hash_to_curve(gt_bytes(k).as_slice(), HASH_TO_G2_DST, &[])
}

fn auth_hash(ephemeral: &G1Affine, m: &Gt) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(AUTH_HASH_DOMAIN);
    h.update(ephemeral.to_compressed());
    h.update(gt_bytes(m).as_slice());
    h.finalize().into()
}

fn nonzero_scalar(rng: &mut (impl RngCore + CryptoRng)) -> Scalar {
    loop {
        let s = Scalar::random(&mut *rng);
        if !bool::from(s.is_zero()) {
            return s;
        }
    }
}

/// The compressed bytes of a G_T element. The identity, the only element blstrs cannot compress,
/// maps to zeros (no caller hashes or stores it: plaintexts and temp keys are never the identity).
fn gt_bytes(x: &Gt) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(GT_LEN));
    if bool::from(x.is_identity()) {
        out.resize(GT_LEN, 0);
    } else if x.write_compressed(&mut *out).is_err() {
        out.clear();
        out.resize(GT_LEN, 0);
    }
    out
}

fn read_g1(bytes: &[u8]) -> Result<G1Affine, PreError> {
    let arr: &[u8; G1_LEN] = bytes.try_into().map_err(|_| PreError::Malformed("G1 length"))?;
    let p = Option::<G1Affine>::from(G1Affine::from_compressed(arr))
        .ok_or(PreError::Malformed("not a G1 point"))?;
    if bool::from(p.is_identity()) {
        return Err(PreError::Malformed("identity G1 point"));
    }
    Ok(p)
}

fn read_g2(bytes: &[u8]) -> Result<G2Affine, PreError> {
    let arr: &[u8; G2_LEN] = bytes.try_into().map_err(|_| PreError::Malformed("G2 length"))?;
    let p = Option::<G2Affine>::from(G2Affine::from_compressed(arr))
        .ok_or(PreError::Malformed("not a G2 point"))?;
    if bool::from(p.is_identity()) {
        return Err(PreError::Malformed("identity G2 point"));
    }
    Ok(p)
}

fn read_gt(bytes: &[u8]) -> Result<Gt, PreError> {
    if bytes.len() != GT_LEN {
        return Err(PreError::Malformed("G_T length"));
    }
    // `read_compressed` checks field elements and membership of the order-q subgroup.
    let x = Gt::read_compressed(bytes).map_err(|_| PreError::Malformed("not a G_T element"))?;
    if bool::from(x.is_identity()) {
        return Err(PreError::Malformed("identity G_T element"));
    }
    Ok(x)
}

fn write_gt(out: &mut Vec<u8>, x: &Gt) {
    out.extend_from_slice(gt_bytes(x).as_slice());
}

/// A cursor over bytes that never panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PreError> {
        if self.0.len() < n {
            return Err(PreError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, PreError> {
        self.take(1).map(|b| b.first().copied().unwrap_or(0))
    }

    fn end(&self) -> Result<(), PreError> {
        if self.0.is_empty() { Ok(()) } else { Err(PreError::Malformed("trailing bytes")) }
    }
}

impl EncryptedValue {
    /// How many transforms it went through.
    pub fn hops(&self) -> usize {
        self.blocks.len()
    }

    /// `version ‖ E ‖ C ‖ auth hash ‖ n ‖ n × (S ‖ K')`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(2 + G1_LEN + GT_LEN + 32 + self.blocks.len() * (G1_LEN + GT_LEN));
        out.push(VALUE_VERSION);
        out.extend_from_slice(&self.ephemeral.to_compressed());
        write_gt(&mut out, &self.body);
        out.extend_from_slice(&self.auth_hash);
        out.push(u8::try_from(self.blocks.len()).unwrap_or(u8::MAX));
        for b in &self.blocks {
            out.extend_from_slice(&b.ephemeral.to_compressed());
            write_gt(&mut out, &b.encrypted_temp_key);
        }
        out
    }

    /// Parses [`EncryptedValue::to_bytes`], checking every point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PreError> {
        let mut r = Reader(bytes);
        if r.byte()? != VALUE_VERSION {
            return Err(PreError::Malformed("unknown version"));
        }
        let ephemeral = read_g1(r.take(G1_LEN)?)?;
        let body = read_gt(r.take(GT_LEN)?)?;
        let auth_hash: [u8; 32] =
            r.take(32)?.try_into().map_err(|_| PreError::Malformed("auth hash"))?;
        let n = usize::from(r.byte()?);
        if n > MAX_HOPS {
            return Err(PreError::TooManyHops);
        }
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let ephemeral = read_g1(r.take(G1_LEN)?)?;
            let encrypted_temp_key = read_gt(r.take(GT_LEN)?)?;
            blocks.push(TransformBlock { ephemeral, encrypted_temp_key });
        }
        r.end()?;
        Ok(Self { ephemeral, body, auth_hash, blocks })
    }
}

impl TransformKey {
    /// `version ‖ from ‖ to ‖ S ‖ K' ‖ h`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 3 * G1_LEN + GT_LEN + G2_LEN);
        out.push(TRANSFORM_KEY_VERSION);
        out.extend_from_slice(&self.from.to_bytes());
        out.extend_from_slice(&self.to.to_bytes());
        out.extend_from_slice(&self.ephemeral.to_compressed());
        write_gt(&mut out, &self.encrypted_temp_key);
        out.extend_from_slice(&self.hashed_temp_key.to_compressed());
        out
    }

    /// Parses [`TransformKey::to_bytes`], checking every point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PreError> {
        let mut r = Reader(bytes);
        if r.byte()? != TRANSFORM_KEY_VERSION {
            return Err(PreError::Malformed("unknown version"));
        }
        let from = PublicKey(read_g1(r.take(G1_LEN)?)?);
        let to = PublicKey(read_g1(r.take(G1_LEN)?)?);
        let ephemeral = read_g1(r.take(G1_LEN)?)?;
        let encrypted_temp_key = read_gt(r.take(GT_LEN)?)?;
        let hashed_temp_key = read_g2(r.take(G2_LEN)?)?;
        r.end()?;
        Ok(Self { from, to, ephemeral, encrypted_temp_key, hashed_temp_key })
    }
}

/// What an attacker holding every transform key could compute from `value` without a private
/// key: every G_T element in it and in its transforms by up to two of `keys` (in any order, whether
/// or not they match), each also unmasked with every key's hashed temporary key and with `H2` of
/// every other element. The attack tests use each as a candidate document key.
#[cfg(test)]
pub(crate) fn attack_candidates(value: &EncryptedValue, keys: &[TransformKey]) -> Vec<Plaintext> {
    let mut chains = vec![value.clone()];
    for a in keys {
        let Ok(one) = transform(value, a) else { continue };
        for b in keys {
            if let Ok(two) = transform(&one, b) {
                chains.push(two);
            }
        }
        chains.push(one);
    }
    let mut out = Vec::new();
    for v in &chains {
        let mut elements = vec![(v.ephemeral, v.body)];
        elements.extend(v.blocks.iter().map(|b| (b.ephemeral, b.encrypted_temp_key)));
        for (ephemeral, x) in &elements {
            out.push(Plaintext(*x));
            for k in keys {
                out.push(Plaintext(*x - pairing(ephemeral, &k.hashed_temp_key)));
            }
            for (_, y) in &elements {
                if let Ok(u) = unmask(ephemeral, x, y) {
                    out.push(Plaintext(u));
                }
            }
        }
    }
    out
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>() + "…"
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn level_one_round_trip_and_wrong_key() {
        let mut rng = rng();
        let (a, b) = (PrivateKey::generate(&mut rng), PrivateKey::generate(&mut rng));
        let m = Plaintext::generate(&mut rng);
        let v = encrypt(&m, &a.public_key(), &mut rng);
        assert_eq!(decrypt(&v, &a).unwrap(), m);
        assert_eq!(decrypt(&v, &b), Err(PreError::Decrypt));
    }

    #[test]
    fn one_two_and_three_hops_reach_only_the_last_key() {
        let mut rng = rng();
        let keys: Vec<PrivateKey> = (0..4).map(|_| PrivateKey::generate(&mut rng)).collect();
        let m = Plaintext::generate(&mut rng);
        let mut v = encrypt(&m, &keys[0].public_key(), &mut rng);
        for hop in 1..4 {
            let tk = transform_key(&keys[hop - 1], &keys[hop].public_key(), &mut rng);
            v = transform(&v, &tk).unwrap();
            assert_eq!(v.hops(), hop);
            assert_eq!(decrypt(&v, &keys[hop]).unwrap(), m, "hop {hop}");
            for (i, other) in keys.iter().enumerate().filter(|(i, _)| *i != hop) {
                assert_eq!(decrypt(&v, other), Err(PreError::Decrypt), "key {i} at hop {hop}");
            }
        }
    }

    #[test]
    fn a_transform_key_from_someone_else_yields_an_undecryptable_value() {
        let mut rng = rng();
        let (a, b, c) = (
            PrivateKey::generate(&mut rng),
            PrivateKey::generate(&mut rng),
            PrivateKey::generate(&mut rng),
        );
        let m = Plaintext::generate(&mut rng);
        let v = encrypt(&m, &a.public_key(), &mut rng);
        // c → b applied to a value for a: b must not be able to read it.
        let wrong = transform(&v, &transform_key(&c, &b.public_key(), &mut rng)).unwrap();
        assert_eq!(decrypt(&wrong, &b), Err(PreError::Decrypt));
    }

    #[test]
    fn encodings_round_trip_and_refuse_damage() {
        let mut rng = rng();
        let (a, b) = (PrivateKey::generate(&mut rng), PrivateKey::generate(&mut rng));
        let m = Plaintext::generate(&mut rng);
        let tk = transform_key(&a, &b.public_key(), &mut rng);
        assert_eq!(TransformKey::from_bytes(&tk.to_bytes()).unwrap(), tk);
        let v = transform(&encrypt(&m, &a.public_key(), &mut rng), &tk).unwrap();
        let bytes = v.to_bytes();
        assert_eq!(EncryptedValue::from_bytes(&bytes).unwrap(), v);
        for cut in [0, 1, 10, bytes.len() - 1] {
            assert!(matches!(
                EncryptedValue::from_bytes(&bytes[..cut]),
                Err(PreError::Malformed(_))
            ));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(EncryptedValue::from_bytes(&longer).is_err());
        // A flipped bit anywhere: refused at parsing or at decryption, never accepted.
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            if let Ok(parsed) = EncryptedValue::from_bytes(&bad) {
                assert!(decrypt(&parsed, &b).is_err(), "flip at {i} accepted");
            }
        }
        assert!(PublicKey::from_bytes(&[0u8; G1_LEN]).is_err());
        assert!(PrivateKey::from_bytes(&[0u8; 32]).is_err());
        assert!(PrivateKey::from_bytes(&[0xff; 32]).is_err());
    }

    #[test]
    fn plaintext_keys_depend_on_the_element_and_the_info() {
        let mut rng = rng();
        let (m1, m2) = (Plaintext::generate(&mut rng), Plaintext::generate(&mut rng));
        assert_ne!(*m1.derive_key(b"a"), *m2.derive_key(b"a"));
        assert_ne!(*m1.derive_key(b"a"), *m1.derive_key(b"b"));
        assert_eq!(*m1.derive_key(b"a"), *m1.derive_key(b"a"));
    }
}

//! Authenticated encryption and key wrapping with AES-256-GCM (ring).
//!
//! Sealed format, version 1: `0x01 || nonce (12 bytes) || ciphertext || tag (16 bytes)`.
//! The nonce is random for every call. After 2^32 seals under one key the chance that two
//! nonces repeat is about 2^-33 (birthday bound), so keep each key well below that count.
//! Each key here protects one vault or the root key, which stays far below it.
//!
//! The associated data binds a ciphertext to where it is stored: build it with the
//! [`aad`] functions so that a value copied to another vault, secret or version fails to
//! open.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Version byte written in front of every sealed value.
pub const SEAL_VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Smallest possible sealed value: version byte, nonce and tag around an empty plaintext.
pub const SEALED_MIN_LEN: usize = 1 + NONCE_LEN + TAG_LEN;

/// Failures of the primitives in this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The operating system's random generator returned an error.
    #[error(
        "the operating system's random number generator failed; retry, and check that the host's entropy source is available"
    )]
    RandomUnavailable,
    /// The input is shorter than the fixed parts of the sealed format.
    #[error(
        "sealed value is truncated: it has {len} bytes but a sealed value has at least {min}; the stored copy is damaged, restore it from a backup"
    )]
    Truncated {
        /// Length received.
        len: usize,
        /// Minimum length of the format.
        min: usize,
    },
    /// The first byte names a format this build does not read.
    #[error(
        "sealed value has unknown format version `{version}`: this build reads version {SEAL_VERSION}; upgrade latchkey, or check that the value was written by latchkey"
    )]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The tag did not verify. AES-GCM cannot tell these causes apart.
    #[error(
        "sealed value could not be opened: the key is wrong, the value belongs to another vault, secret or version, or it was altered; check that the right vault key is unsealed"
    )]
    Authentication,
    /// Sealing failed. Ring rejects only plaintexts beyond the AES-GCM size limit.
    #[error(
        "could not seal a value of {len} bytes: it exceeds the AES-GCM size limit; store smaller values"
    )]
    SealFailed {
        /// Plaintext length.
        len: usize,
    },
    /// The AES backend rejected a key. It accepts every 32-byte key, so this is a bug.
    #[error("the AES-256-GCM backend rejected a 32-byte key; this is a bug in latchkey, report it")]
    KeySetup,
    /// A wrapped key opened, but its plaintext is not a 32-byte key.
    #[error(
        "invalid wrapped key: it contains {len} bytes instead of 32; the stored wrapped key is damaged, restore it from a backup"
    )]
    WrappedKeyLength {
        /// Plaintext length found.
        len: usize,
    },
}

/// A 256-bit symmetric key. Zeroized on drop; it has no `Debug`, `Display` or `Clone`
/// so that it cannot be printed or copied by accident.
pub struct Key256(Zeroizing<[u8; 32]>);

impl Key256 {
    /// Generates a key with the operating system's secure random generator.
    ///
    /// # Errors
    /// [`CryptoError::RandomUnavailable`] when the generator fails.
    pub fn generate() -> Result<Key256, CryptoError> {
        let mut key = Key256::zeroed();
        fill_random(key.bytes_mut())?;
        Ok(key)
    }

    /// Wraps existing key material. The caller remains responsible for wiping its copy.
    pub fn from_bytes(bytes: [u8; 32]) -> Key256 {
        Key256(Zeroizing::new(bytes))
    }

    /// Returns the raw key bytes for a primitive to use.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Creates an all-zero key to fill in place, so that the secret is not copied.
    pub(crate) fn zeroed() -> Key256 {
        Key256(Zeroizing::new([0u8; 32]))
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        UnboundKey::new(&AES_256_GCM, self.expose())
            .map(LessSafeKey::new)
            .map_err(|_| CryptoError::KeySetup)
    }
}

fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| CryptoError::RandomUnavailable)
}

/// Encrypts and authenticates `plaintext`, binding it to `aad`.
///
/// # Errors
/// [`CryptoError::RandomUnavailable`] if no nonce can be drawn; [`CryptoError::SealFailed`]
/// for a plaintext over the AES-GCM limit (about 64 GiB).
pub fn seal(key: &Key256, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
    let aead = key.aead()?;
    let mut out = Vec::with_capacity(SEALED_MIN_LEN + plaintext.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(plaintext);
    let tag = aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut out[1 + NONCE_LEN..],
        )
        .map_err(|_| CryptoError::SealFailed {
            len: plaintext.len(),
        })?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Verifies and decrypts a value made by [`seal`] with the same key and `aad`.
///
/// # Errors
/// [`CryptoError::Truncated`] for input shorter than the format,
/// [`CryptoError::UnknownVersion`] for a first byte other than 1, and
/// [`CryptoError::Authentication`] for a wrong key, wrong `aad` or altered bytes.
pub fn open(key: &Key256, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let Some(&version) = sealed.first() else {
        return Err(CryptoError::Truncated {
            len: 0,
            min: SEALED_MIN_LEN,
        });
    };
    if version != SEAL_VERSION {
        return Err(CryptoError::UnknownVersion { version });
    }
    if sealed.len() < SEALED_MIN_LEN {
        return Err(CryptoError::Truncated {
            len: sealed.len(),
            min: SEALED_MIN_LEN,
        });
    }
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
    let aead = key.aead()?;
    let mut buf = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
    let plain_len = aead
        .open_in_place(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Authentication)?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// Seals one key under another (the key-encryption key).
///
/// # Errors
/// As [`seal`].
pub fn wrap_key(kek: &Key256, aad: &[u8], key: &Key256) -> Result<Vec<u8>, CryptoError> {
    seal(kek, aad, key.expose())
}

/// Opens a key sealed by [`wrap_key`].
///
/// # Errors
/// As [`open`], plus [`CryptoError::WrappedKeyLength`] when the plaintext is not 32 bytes.
pub fn unwrap_key(kek: &Key256, aad: &[u8], wrapped: &[u8]) -> Result<Key256, CryptoError> {
    let plain = open(kek, aad, wrapped)?;
    if plain.len() != 32 {
        return Err(CryptoError::WrappedKeyLength { len: plain.len() });
    }
    let mut key = Key256::zeroed();
    key.bytes_mut().copy_from_slice(&plain);
    Ok(key)
}

/// Computes the SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Returns `N` bytes from the operating system's secure random generator.
///
/// # Errors
/// [`CryptoError::RandomUnavailable`] when the generator fails.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

/// Associated data for [`seal`] and [`wrap_key`].
///
/// Encoding: the ASCII tag `latchkey-aad-v1`, then the purpose and each component, each
/// written as a 4-byte big-endian length followed by its bytes. Lengths make the encoding
/// injective: `("a/b", "c")` and `("a", "b/c")` give different bytes, and so do different
/// purposes with the same components.
pub mod aad {
    const TAG: &[u8] = b"latchkey-aad-v1";

    fn encode(parts: &[&[u8]]) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(TAG.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
        out.extend_from_slice(TAG);
        for part in parts {
            // Components are short ids. Saturating at 4 GiB avoids a panic path for
            // inputs that large.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Builds the associated data for the root key wrapped under the unseal key.
    pub fn root_key() -> Vec<u8> {
        encode(&[b"root-key"])
    }

    /// Builds the associated data for a vault's data key wrapped under the root key.
    pub fn vault_key(vault_id: &str) -> Vec<u8> {
        encode(&[b"vault-key", vault_id.as_bytes()])
    }

    /// Builds the associated data for the audit signing key (Ed25519 PKCS#8) sealed under
    /// the root key.
    pub fn audit_key() -> Vec<u8> {
        encode(&[b"audit-signing-key"])
    }

    /// Builds the associated data for an identity connector's client secret sealed under
    /// the root key.
    pub fn connector_secret(kind: &str, name: &str) -> Vec<u8> {
        encode(&[b"connector-secret", kind.as_bytes(), name.as_bytes()])
    }

    /// Builds the associated data for the private part of a login in progress, sealed under
    /// the root key and bound to the hash that keys its row.
    pub fn login_attempt(id_hash: &str) -> Vec<u8> {
        encode(&[b"login-attempt", id_hash.as_bytes()])
    }

    /// Builds the associated data for one version of a secret sealed under its vault's key.
    pub fn secret_version(vault_id: &str, secret_id: &str, version: u32) -> Vec<u8> {
        encode(&[
            b"secret-version",
            vault_id.as_bytes(),
            secret_id.as_bytes(),
            &version.to_be_bytes(),
        ])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn key() -> Key256 {
        Key256::generate().unwrap()
    }

    #[test]
    fn round_trip() {
        let k = key();
        let aad = aad::secret_version("v1", "s1", 3);
        let sealed = seal(&k, &aad, b"hunter2").unwrap();
        assert_eq!(sealed[0], SEAL_VERSION);
        assert_eq!(sealed.len(), SEALED_MIN_LEN + 7);
        assert_eq!(open(&k, &aad, &sealed).unwrap().as_slice(), b"hunter2");
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let k = key();
        let sealed = seal(&k, b"", b"").unwrap();
        assert_eq!(sealed.len(), SEALED_MIN_LEN);
        assert!(open(&k, b"", &sealed).unwrap().is_empty());
    }

    #[test]
    fn nonces_differ_between_calls() {
        let k = key();
        let a = seal(&k, b"x", b"same").unwrap();
        let b = seal(&k, b"x", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = seal(&key(), b"aad", b"data").unwrap();
        assert_eq!(
            open(&key(), b"aad", &sealed).unwrap_err(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn other_vault_secret_or_version_aad_fails() {
        let k = key();
        let sealed = seal(&k, &aad::secret_version("vault-a", "db", 1), b"pw").unwrap();
        for other in [
            aad::secret_version("vault-b", "db", 1),
            aad::secret_version("vault-a", "dc", 1),
            aad::secret_version("vault-a", "db", 2),
            aad::vault_key("vault-a"),
            aad::root_key(),
        ] {
            assert_eq!(
                open(&k, &other, &sealed).unwrap_err(),
                CryptoError::Authentication
            );
        }
        let wrapped = wrap_key(&k, &aad::vault_key("vault-a"), &key()).unwrap();
        assert_eq!(
            unwrap_key(&k, &aad::vault_key("vault-b"), &wrapped)
                .err()
                .unwrap(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn every_flipped_bit_fails() {
        let k = key();
        let sealed = seal(&k, b"aad", b"payload").unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                let err = open(&k, b"aad", &bad).unwrap_err();
                if byte == 0 {
                    assert_eq!(err, CryptoError::UnknownVersion { version: bad[0] });
                } else {
                    assert_eq!(err, CryptoError::Authentication);
                }
            }
        }
    }

    #[test]
    fn truncated_input_is_reported() {
        let k = key();
        let sealed = seal(&k, b"", b"abc").unwrap();
        assert_eq!(
            open(&k, b"", &[]).unwrap_err(),
            CryptoError::Truncated {
                len: 0,
                min: SEALED_MIN_LEN
            }
        );
        assert_eq!(
            open(&k, b"", &sealed[..SEALED_MIN_LEN - 1]).unwrap_err(),
            CryptoError::Truncated {
                len: SEALED_MIN_LEN - 1,
                min: SEALED_MIN_LEN
            }
        );
        // Long enough for the format but missing plaintext bytes: the tag catches it.
        assert_eq!(
            open(&k, b"", &sealed[..sealed.len() - 1]).unwrap_err(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn unknown_version_is_reported() {
        let k = key();
        let mut sealed = seal(&k, b"", b"abc").unwrap();
        sealed[0] = 2;
        let err = open(&k, b"", &sealed).unwrap_err();
        assert_eq!(err, CryptoError::UnknownVersion { version: 2 });
        assert!(err.to_string().contains("unknown format version `2`"));
    }

    #[test]
    fn key_wrap_round_trip() {
        let kek = key();
        let inner = key();
        let wrapped = wrap_key(&kek, &aad::root_key(), &inner).unwrap();
        let back = unwrap_key(&kek, &aad::root_key(), &wrapped).unwrap();
        assert_eq!(back.expose(), inner.expose());
    }

    #[test]
    fn unwrap_rejects_non_key_plaintext() {
        let kek = key();
        let sealed = seal(&kek, b"", &[7u8; 31]).unwrap();
        assert_eq!(
            unwrap_key(&kek, b"", &sealed).err().unwrap(),
            CryptoError::WrappedKeyLength { len: 31 }
        );
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_bytes_are_not_constant() {
        let a: [u8; 32] = random_bytes().unwrap();
        let b: [u8; 32] = random_bytes().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn aad_encodings_are_distinct() {
        let all = [
            aad::root_key(),
            aad::vault_key(""),
            aad::vault_key("a"),
            aad::vault_key("a/b"),
            aad::secret_version("a/b", "c", 1),
            aad::secret_version("a", "b/c", 1),
            aad::secret_version("a", "bc", 1),
            aad::secret_version("ab", "c", 1),
            aad::secret_version("a", "b", 1),
            aad::secret_version("a", "b", 256),
            aad::secret_version("", "", 0),
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(aad::vault_key("a"), aad::vault_key("a"));
    }

    #[test]
    fn audit_key_aad_differs_from_the_others() {
        let audit = aad::audit_key();
        assert_ne!(audit, aad::root_key());
        assert_ne!(audit, aad::vault_key("audit-signing-key"));
        let key = Key256::generate().unwrap();
        let sealed = seal(&key, &audit, b"pkcs8").unwrap();
        assert!(matches!(
            open(&key, &aad::root_key(), &sealed),
            Err(CryptoError::Authentication)
        ));
        assert_eq!(open(&key, &audit, &sealed).unwrap().as_slice(), b"pkcs8");
    }
}

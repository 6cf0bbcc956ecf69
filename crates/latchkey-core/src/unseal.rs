//! Unseal keys that open the root key, from a passphrase (Argon2id) or a quorum of key
//! shares (Shamir).
//!
//! Shares use Shamir's scheme over GF(2^8) with the AES reduction polynomial
//! x^8 + x^4 + x^3 + x + 1, applied to each of the 32 key bytes separately. Field
//! arithmetic is branch-free and table-free so its timing does not depend on the key.
//! Shares carry no threshold and no id of the split they belong to. Combining too few
//! shares, or shares from different splits, returns a wrong key without an error. The
//! caller detects it when that key fails to unwrap the root key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{CryptoError, Key256, random_bytes};

/// Shortest accepted passphrase, in characters (bytes when it is not UTF-8).
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Largest Argon2 memory cost accepted from stored parameters (4 GiB), so that a damaged
/// or hostile configuration cannot make unsealing exhaust the host's memory.
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Every share's text starts with this.
pub const SHARE_PREFIX: &str = "lkshare_";
/// Index byte, 32 share bytes, 4-byte CRC32.
const SHARE_PAYLOAD_LEN: usize = 1 + 32 + 4;
/// Base64 (no padding) length of the payload.
const SHARE_BODY_LEN: usize = (SHARE_PAYLOAD_LEN * 8).div_ceil(6);
/// How many leading characters of a share an error message may show.
const SHOWN_CHARS: usize = 12;

/// Failures while deriving, splitting or combining unseal keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    /// Random generation or another primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The passphrase is empty.
    #[error(
        "the passphrase is empty; enter a passphrase of at least {MIN_PASSPHRASE_CHARS} characters"
    )]
    PassphraseEmpty,
    /// The passphrase is shorter than [`MIN_PASSPHRASE_CHARS`].
    #[error(
        "the passphrase is too short: it has {chars} characters; use at least {MIN_PASSPHRASE_CHARS}"
    )]
    PassphraseTooShort {
        /// Characters in the rejected passphrase.
        chars: usize,
    },
    /// The stored salt is not 16 bytes of hex.
    #[error(
        "passphrase salt `{salt}` is not 32 hexadecimal characters (16 bytes); the unseal configuration is damaged, restore it from a backup"
    )]
    InvalidSalt {
        /// The salt as stored (not secret).
        salt: String,
    },
    /// Argon2 rejected the stored cost parameters.
    #[error(
        "argon2 parameters memory_kib={memory_kib}, iterations={iterations}, parallelism={parallelism} are invalid: {reason}; restore the unseal configuration from a backup"
    )]
    InvalidParams {
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Number of passes.
        iterations: u32,
        /// Number of lanes.
        parallelism: u32,
        /// Argon2's reason for rejecting them.
        reason: String,
    },
    /// Argon2 failed while hashing.
    #[error("argon2 key derivation failed: {reason}; check the unseal configuration")]
    Kdf {
        /// Argon2's description of the failure.
        reason: String,
    },
    /// A split into zero shares was requested.
    #[error("cannot split the root key into 0 shares; choose between 1 and 255 shares")]
    NoShares,
    /// A split with threshold 0 was requested.
    #[error(
        "threshold 0 is invalid for {shares} shares; choose a threshold between 2 and {shares}, or 1 share with threshold 1"
    )]
    ThresholdZero {
        /// Requested share count.
        shares: u8,
    },
    /// The threshold exceeds the number of shares.
    #[error(
        "threshold {threshold} is larger than the {shares} shares; choose a threshold of at most {shares}"
    )]
    ThresholdAboveShares {
        /// Requested threshold.
        threshold: u8,
        /// Requested share count.
        shares: u8,
    },
    /// Threshold 1 with several shares would make every share a copy of the key.
    #[error(
        "threshold 1 with {shares} shares would make every share a full copy of the root key; choose a threshold of at least 2, or a single share"
    )]
    ThresholdOneOfMany {
        /// Requested share count.
        shares: u8,
    },
    /// `combine_shares` got an empty list.
    #[error("no key shares were given; enter at least the threshold number of shares")]
    NoSharesGiven,
    /// Two shares have the same index: the same share was entered twice.
    #[error(
        "share number {index} was entered twice; enter each share once, and a different share instead of the repeat"
    )]
    DuplicateShare {
        /// The repeated index.
        index: u8,
    },
    /// The text does not start with `lkshare_`.
    #[error(
        "`{shown}` is not a key share: shares start with `{SHARE_PREFIX}`; check that the whole share was copied"
    )]
    SharePrefix {
        /// At most the first 12 characters of the input.
        shown: String,
    },
    /// The text has the wrong length.
    #[error(
        "share `{shown}` has {len} characters but shares have {expected}: it was truncated or has extra characters; copy it again"
    )]
    ShareLength {
        /// At most the first 12 characters of the input.
        shown: String,
        /// Characters in the input.
        len: usize,
        /// Characters in every share.
        expected: usize,
    },
    /// The text has characters outside the share alphabet.
    #[error(
        "share `{shown}` is mistyped (it contains characters that never appear in a share: only A-Z, a-z, 0-9, `-` and `_` do); enter it again"
    )]
    ShareCharacters {
        /// At most the first 12 characters of the input.
        shown: String,
    },
    /// The checksum at the end of the share does not match its contents.
    #[error("share `{shown}` is mistyped (checksum mismatch); enter it again exactly as written")]
    ShareChecksum {
        /// At most the first 12 characters of the input.
        shown: String,
    },
    /// The share decodes to index 0, which no share uses.
    #[error("share `{shown}` has index 0, which no share uses; it was not made by latchkey")]
    ShareIndexZero {
        /// At most the first 12 characters of the input.
        shown: String,
    },
}

/// Argon2id settings and salt for turning the operator's passphrase into the unseal key.
/// Stored in clear next to the wrapped root key; none of it is secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassphraseParams {
    /// 16 random bytes, hex-encoded.
    pub salt: String,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes over the memory.
    pub iterations: u32,
    /// Number of lanes.
    pub parallelism: u32,
}

impl PassphraseParams {
    /// Memory in KiB for [`PassphraseParams::generate`]. The defaults are the minimum Argon2id
    /// setting of the OWASP Password Storage Cheat Sheet (19 MiB, 2 passes, 1 lane), so
    /// each guess costs an attacker 19 MiB. Raise `memory_kib` on hosts that can spare more.
    pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
    /// Passes for [`PassphraseParams::generate`].
    pub const DEFAULT_ITERATIONS: u32 = 2;
    /// Lanes for [`PassphraseParams::generate`].
    pub const DEFAULT_PARALLELISM: u32 = 1;

    /// Creates the default costs with a fresh random 16-byte salt.
    ///
    /// # Errors
    /// [`UnsealError::Crypto`] when the random generator fails.
    pub fn generate() -> Result<Self, UnsealError> {
        let salt: [u8; 16] = random_bytes()?;
        Ok(PassphraseParams {
            salt: hex::encode(salt),
            memory_kib: Self::DEFAULT_MEMORY_KIB,
            iterations: Self::DEFAULT_ITERATIONS,
            parallelism: Self::DEFAULT_PARALLELISM,
        })
    }
}

/// Derives the 32-byte unseal key from a passphrase with Argon2id (version 0x13).
///
/// # Errors
/// [`UnsealError::PassphraseEmpty`], [`UnsealError::PassphraseTooShort`] (under 12
/// characters), [`UnsealError::InvalidSalt`], [`UnsealError::InvalidParams`] (including a
/// memory cost above [`MAX_MEMORY_KIB`]) and [`UnsealError::Kdf`].
pub fn derive_key(passphrase: &[u8], params: &PassphraseParams) -> Result<Key256, UnsealError> {
    if passphrase.is_empty() {
        return Err(UnsealError::PassphraseEmpty);
    }
    let chars = std::str::from_utf8(passphrase)
        .map(|s| s.chars().count())
        .unwrap_or(passphrase.len());
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(UnsealError::PassphraseTooShort { chars });
    }

    let salt = hex::decode(&params.salt)
        .ok()
        .filter(|s| s.len() == 16)
        .ok_or_else(|| UnsealError::InvalidSalt {
            salt: params.salt.clone(),
        })?;

    let invalid = |reason: String| UnsealError::InvalidParams {
        memory_kib: params.memory_kib,
        iterations: params.iterations,
        parallelism: params.parallelism,
        reason,
    };
    if params.memory_kib > MAX_MEMORY_KIB {
        return Err(invalid(format!(
            "memory_kib is above the limit of {MAX_MEMORY_KIB}"
        )));
    }
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| invalid(e.to_string()))?;

    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = Key256::zeroed();
    argon
        .hash_password_into(passphrase, &salt, key.bytes_mut())
        .map_err(|e| UnsealError::Kdf {
            reason: e.to_string(),
        })?;
    Ok(key)
}

/// One Shamir share of a 256-bit key: the polynomial's x-coordinate (1..=255) and its 32
/// y-values. Zeroized on drop; no `Debug` or `Clone`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyShare {
    index: u8,
    value: [u8; 32],
}

impl KeyShare {
    /// Encodes the share as `lkshare_` + base64url (no padding) of
    /// `index || 32 share bytes || CRC32 (big-endian) of the preceding 33 bytes`, which is
    /// 58 characters in all. The CRC32 detects every single mistyped character (the tests
    /// try each position with each other character).
    pub fn encode(&self) -> Zeroizing<String> {
        let mut payload = Zeroizing::new([0u8; SHARE_PAYLOAD_LEN]);
        payload[0] = self.index;
        payload[1..33].copy_from_slice(&self.value);
        let crc = crc32fast::hash(&payload[..33]);
        payload[33..].copy_from_slice(&crc.to_be_bytes());
        // Sized up front so the buffer never reallocates and leaves a stray copy.
        let mut text = Zeroizing::new(String::with_capacity(SHARE_PREFIX.len() + SHARE_BODY_LEN));
        text.push_str(SHARE_PREFIX);
        URL_SAFE_NO_PAD.encode_string(payload.as_slice(), &mut text);
        text
    }

    /// Parses the text form made by [`KeyShare::encode`], ignoring surrounding whitespace.
    /// Error messages show at most the first 12 characters of the input.
    ///
    /// # Errors
    /// [`UnsealError::SharePrefix`], [`UnsealError::ShareLength`],
    /// [`UnsealError::ShareCharacters`], [`UnsealError::ShareChecksum`] and
    /// [`UnsealError::ShareIndexZero`].
    pub fn parse(text: &str) -> Result<KeyShare, UnsealError> {
        let text = text.trim();
        let shown = || shown_prefix(text);
        let Some(body) = text.strip_prefix(SHARE_PREFIX) else {
            return Err(UnsealError::SharePrefix { shown: shown() });
        };

        if body.len() != SHARE_BODY_LEN || !body.is_ascii() {
            let len = text.chars().count();
            let expected = SHARE_PREFIX.len() + SHARE_BODY_LEN;
            if len != expected {
                return Err(UnsealError::ShareLength {
                    shown: shown(),
                    len,
                    expected,
                });
            }
            return Err(UnsealError::ShareCharacters { shown: shown() });
        }

        let payload = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|e| match e {
            // Only the unused low bits of the last character are set, so it was mistyped.
            base64::DecodeError::InvalidLastSymbol(..) => {
                UnsealError::ShareChecksum { shown: shown() }
            }
            _ => UnsealError::ShareCharacters { shown: shown() },
        })?);

        if payload.len() != SHARE_PAYLOAD_LEN {
            return Err(UnsealError::ShareChecksum { shown: shown() });
        }
        let mut stored = [0u8; 4];
        stored.copy_from_slice(&payload[33..]);
        if crc32fast::hash(&payload[..33]) != u32::from_be_bytes(stored) {
            return Err(UnsealError::ShareChecksum { shown: shown() });
        }
        if payload[0] == 0 {
            return Err(UnsealError::ShareIndexZero { shown: shown() });
        }

        let mut share = KeyShare {
            index: payload[0],
            value: [0u8; 32],
        };
        share.value.copy_from_slice(&payload[1..33]);
        Ok(share)
    }

    /// Returns the share's x-coordinate (1..=255), which is also its number for operators.
    pub fn index(&self) -> u8 {
        self.index
    }
}

fn shown_prefix(text: &str) -> String {
    let mut chars = text.chars();
    let mut shown: String = chars.by_ref().take(SHOWN_CHARS).collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

/// Splits `key` into `shares` shares of which any `threshold` rebuild it. Shares are
/// numbered 1..=`shares`.
///
/// # Errors
/// [`UnsealError::NoShares`], [`UnsealError::ThresholdZero`],
/// [`UnsealError::ThresholdAboveShares`], [`UnsealError::ThresholdOneOfMany`] (threshold 1
/// is only allowed with a single share), and [`UnsealError::Crypto`] if random generation
/// fails.
pub fn split_key(key: &Key256, shares: u8, threshold: u8) -> Result<Vec<KeyShare>, UnsealError> {
    if shares == 0 {
        return Err(UnsealError::NoShares);
    }
    if threshold == 0 {
        return Err(UnsealError::ThresholdZero { shares });
    }
    if threshold > shares {
        return Err(UnsealError::ThresholdAboveShares { threshold, shares });
    }
    if threshold == 1 && shares > 1 {
        return Err(UnsealError::ThresholdOneOfMany { shares });
    }

    // For key byte b the polynomial is key[b] + c[0][b] x + ... + c[t-2][b] x^(t-1), where
    // every c is uniformly random.
    let degree = usize::from(threshold) - 1;
    let mut coefficients = Zeroizing::new(vec![[0u8; 32]; degree]);
    for row in coefficients.iter_mut() {
        *row = random_bytes()?;
    }

    let mut out = Vec::with_capacity(usize::from(shares));
    for x in 1..=shares {
        let mut share = KeyShare {
            index: x,
            value: [0u8; 32],
        };
        for (b, y) in share.value.iter_mut().enumerate() {
            // Horner's rule from the highest coefficient down to the key byte.
            let mut acc = 0u8;
            for row in coefficients.iter().rev() {
                acc = gf_mul(acc, x) ^ row[b];
            }
            *y = gf_mul(acc, x) ^ key.expose()[b];
        }
        out.push(share);
    }
    Ok(out)
}

/// Rebuilds a key from shares by Lagrange interpolation at x = 0.
///
/// With at least the threshold number of shares from one split the result is the
/// original key. With fewer, or with shares of different splits, the result is an
/// unrelated key and no error is raised: detect that by the root key failing to unwrap.
///
/// # Errors
/// [`UnsealError::NoSharesGiven`] for an empty slice and [`UnsealError::DuplicateShare`]
/// when two shares have the same index.
pub fn combine_shares(shares: &[KeyShare]) -> Result<Key256, UnsealError> {
    if shares.is_empty() {
        return Err(UnsealError::NoSharesGiven);
    }
    let mut seen = [false; 256];
    for share in shares {
        let slot = &mut seen[usize::from(share.index)];
        if *slot {
            return Err(UnsealError::DuplicateShare { index: share.index });
        }
        *slot = true;
    }
    let mut key = Key256::zeroed();
    for share in shares {
        // Lagrange basis polynomial of this share at 0: the product over the other shares j
        // of x_j / (x_j - x_i), where subtraction is XOR.
        let mut numerator = 1u8;
        let mut denominator = 1u8;
        for other in shares.iter().filter(|o| o.index != share.index) {
            numerator = gf_mul(numerator, other.index);
            denominator = gf_mul(denominator, other.index ^ share.index);
        }
        let basis = gf_mul(numerator, gf_inv(denominator));
        for (k, y) in key.bytes_mut().iter_mut().zip(share.value.iter()) {
            *k ^= gf_mul(*y, basis);
        }
    }
    Ok(key)
}

/// Multiplies in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1, without branches or tables.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        product ^= a & (b & 1).wrapping_neg();
        let carry = (a >> 7).wrapping_neg();
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// Computes the multiplicative inverse as a^254, because a^255 = 1 for a != 0. Maps 0 to 0.
fn gf_inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut square = a;
    // result = a^2 * a^4 * ... * a^128 = a^254
    for _ in 0..7 {
        square = gf_mul(square, square);
        result = gf_mul(result, square);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    fn fast_params() -> PassphraseParams {
        PassphraseParams {
            salt: "00112233445566778899aabbccddeeff".to_owned(),
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn key_from(byte: u8) -> Key256 {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = byte.wrapping_add(u8::try_from(i).unwrap());
        }
        Key256::from_bytes(bytes)
    }

    fn subsets(n: usize) -> impl Iterator<Item = Vec<usize>> {
        (1u32..(1 << n)).map(move |mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
    }

    fn reparse(shares: &[KeyShare], pick: &[usize]) -> Vec<KeyShare> {
        pick.iter()
            .map(|&i| KeyShare::parse(&shares[i].encode()).unwrap())
            .collect()
    }

    #[test]
    fn gf_mul_known_answers() {
        // Worked examples from the AES specification (FIPS-197, section 4).
        assert_eq!(gf_mul(0x57, 0x83), 0xc1);
        assert_eq!(gf_mul(0x57, 0x13), 0xfe);
        assert_eq!(gf_mul(0x53, 0xca), 0x01);
    }

    #[test]
    fn gf_field_laws() {
        for a in 0..=255u8 {
            assert_eq!(gf_mul(a, 0), 0);
            assert_eq!(gf_mul(a, 1), a);
            if a != 0 {
                assert_eq!(gf_mul(a, gf_inv(a)), 1, "inverse of {a:#04x}");
            }
            for b in 0..=255u8 {
                assert_eq!(gf_mul(a, b), gf_mul(b, a));
            }
        }
        assert_eq!(gf_inv(0), 0);
        for (a, b, c) in [(3u8, 7u8, 0x1fu8), (0x80, 0xff, 0x02), (0xaa, 0x55, 0x99)] {
            assert_eq!(gf_mul(gf_mul(a, b), c), gf_mul(a, gf_mul(b, c)));
            assert_eq!(gf_mul(a, b ^ c), gf_mul(a, b) ^ gf_mul(a, c));
        }
    }

    #[test]
    fn split_three_of_five_all_subsets() {
        let key = Key256::generate().unwrap();
        let shares = split_key(&key, 5, 3).unwrap();
        assert_eq!(
            shares.iter().map(KeyShare::index).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let mut tried = 0;
        for pick in subsets(5) {
            let got = combine_shares(&reparse(&shares, &pick)).unwrap();
            if pick.len() >= 3 {
                assert_eq!(got.expose(), key.expose(), "subset {pick:?}");
            } else {
                assert_ne!(got.expose(), key.expose(), "subset {pick:?}");
            }
            tried += 1;
        }
        assert_eq!(tried, 31);
    }

    #[test]
    fn split_shares_are_distinct() {
        let key = key_from(9);
        let shares = split_key(&key, 4, 2).unwrap();
        for (i, a) in shares.iter().enumerate() {
            assert_ne!(&a.value, key.expose());
            for b in &shares[i + 1..] {
                assert_ne!(a.value, b.value);
            }
        }
        // Two splits of the same key use fresh coefficients.
        let again = split_key(&key, 4, 2).unwrap();
        assert_ne!(shares[0].value, again[0].value);
    }

    #[test]
    fn one_of_one_works() {
        let key = key_from(200);
        let shares = split_key(&key, 1, 1).unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(shares[0].index(), 1);
        let back = combine_shares(&reparse(&shares, &[0])).unwrap();
        assert_eq!(back.expose(), key.expose());
    }

    #[test]
    fn split_255_of_255() {
        let key = key_from(77);
        let shares = split_key(&key, 255, 255).unwrap();
        assert_eq!(shares.last().unwrap().index(), 255);
        assert_eq!(combine_shares(&shares).unwrap().expose(), key.expose());
        assert_ne!(combine_shares(&shares[1..]).unwrap().expose(), key.expose());
    }

    #[test]
    fn split_parameters_are_validated() {
        let key = key_from(1);
        let check = |n, t, want: UnsealError, text: &str| {
            let err = split_key(&key, n, t).err().unwrap();
            assert_eq!(err, want);
            assert!(err.to_string().contains(text), "{err}");
        };
        check(0, 0, UnsealError::NoShares, "0 shares");
        check(
            3,
            0,
            UnsealError::ThresholdZero { shares: 3 },
            "threshold 0",
        );
        check(
            3,
            4,
            UnsealError::ThresholdAboveShares {
                threshold: 4,
                shares: 3,
            },
            "threshold 4 is larger than the 3 shares",
        );
        check(
            5,
            1,
            UnsealError::ThresholdOneOfMany { shares: 5 },
            "threshold 1 with 5 shares",
        );
        assert_eq!(split_key(&key, 2, 2).unwrap().len(), 2);
    }

    #[test]
    fn combine_rejects_duplicates_and_empty() {
        let shares = split_key(&key_from(3), 3, 2).unwrap();
        let twice = reparse(&shares, &[1, 0, 1]);
        assert_eq!(
            combine_shares(&twice).err().unwrap(),
            UnsealError::DuplicateShare { index: 2 }
        );
        assert_eq!(
            combine_shares(&[]).err().unwrap(),
            UnsealError::NoSharesGiven
        );
    }

    #[test]
    fn shares_from_different_splits_give_a_wrong_key() {
        let key = key_from(5);
        let a = split_key(&key, 3, 2).unwrap();
        let b = split_key(&key, 3, 2).unwrap();
        let mixed = vec![
            KeyShare::parse(&a[0].encode()).unwrap(),
            KeyShare::parse(&b[1].encode()).unwrap(),
        ];
        assert_ne!(combine_shares(&mixed).unwrap().expose(), key.expose());
    }

    #[test]
    fn share_text_round_trip() {
        let shares = split_key(&key_from(42), 3, 2).unwrap();
        for share in &shares {
            let text = share.encode();
            assert!(text.starts_with("lkshare_"));
            assert_eq!(text.len(), 58);
            let back = KeyShare::parse(&format!("  {}\n", text.as_str())).unwrap();
            assert_eq!(back.index(), share.index());
            assert_eq!(back.value, share.value);
        }
    }

    #[test]
    fn every_single_character_typo_is_detected() {
        let shares = split_key(&key_from(11), 2, 2).unwrap();
        let text = shares[1].encode();
        for pos in SHARE_PREFIX.len()..text.len() {
            for c in ALPHABET.chars() {
                if text.as_bytes()[pos] == c as u8 {
                    continue;
                }
                let mut typo = text.to_string();
                typo.replace_range(pos..=pos, &c.to_string());
                let err = KeyShare::parse(&typo).err().unwrap();
                assert!(
                    matches!(err, UnsealError::ShareChecksum { .. }),
                    "position {pos}, character {c}: {err}"
                );
            }
        }
    }

    #[test]
    fn checksum_message_shows_only_twelve_characters() {
        let shares = split_key(&key_from(12), 2, 2).unwrap();
        let text = shares[0].encode();
        let mut typo = text.to_string();
        let last = typo.pop().unwrap();
        typo.push(if last == 'A' { 'Q' } else { 'A' });
        let err = KeyShare::parse(&typo).err().unwrap();
        let expected = format!(
            "share `{}…` is mistyped (checksum mismatch); enter it again exactly as written",
            &text[..12]
        );
        assert_eq!(err.to_string(), expected);
        assert!(!err.to_string().contains(&text[..13]));
    }

    #[test]
    fn malformed_share_texts() {
        let text = split_key(&key_from(13), 2, 2).unwrap()[0].encode();
        assert!(matches!(
            KeyShare::parse("lktoken_abc").err().unwrap(),
            UnsealError::SharePrefix { shown } if shown == "lktoken_abc"
        ));
        assert!(matches!(
            KeyShare::parse(&text[..40]).err().unwrap(),
            UnsealError::ShareLength {
                len: 40,
                expected: 58,
                ..
            }
        ));
        let mut bad = text.to_string();
        bad.replace_range(20..21, "+");
        assert!(matches!(
            KeyShare::parse(&bad).err().unwrap(),
            UnsealError::ShareCharacters { .. }
        ));
        let mut accented = text.to_string();
        accented.replace_range(20..21, "é");
        assert!(matches!(
            KeyShare::parse(&accented).err().unwrap(),
            UnsealError::ShareCharacters { .. }
        ));
    }

    #[test]
    fn index_zero_is_rejected() {
        let mut payload = [0u8; SHARE_PAYLOAD_LEN];
        payload[1..33].copy_from_slice(&[7u8; 32]);
        let crc = crc32fast::hash(&payload[..33]);
        payload[33..].copy_from_slice(&crc.to_be_bytes());
        let text = format!("{SHARE_PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
        assert!(matches!(
            KeyShare::parse(&text).err().unwrap(),
            UnsealError::ShareIndexZero { .. }
        ));
    }

    #[test]
    fn passphrase_length_rules() {
        let p = fast_params();
        assert_eq!(
            derive_key(b"", &p).err().unwrap(),
            UnsealError::PassphraseEmpty
        );
        let err = derive_key(b"short pass!", &p).err().unwrap();
        assert_eq!(err, UnsealError::PassphraseTooShort { chars: 11 });
        assert_eq!(
            err.to_string(),
            "the passphrase is too short: it has 11 characters; use at least 12"
        );
        assert!(derive_key(b"exactly 12ch", &p).is_ok());
        // Twelve characters of two bytes each count as twelve, not twenty-four.
        assert!(derive_key("éééééééééééé".as_bytes(), &p).is_ok());
        assert_eq!(
            derive_key("ééééééééééé".as_bytes(), &p).err().unwrap(),
            UnsealError::PassphraseTooShort { chars: 11 }
        );
    }

    #[test]
    fn derivation_is_deterministic_and_depends_on_every_input() {
        let p = fast_params();
        let a = derive_key(b"correct horse battery", &p).unwrap();
        let b = derive_key(b"correct horse battery", &p).unwrap();
        assert_eq!(a.expose(), b.expose());
        let other_pass = derive_key(b"correct horse batterx", &p).unwrap();
        assert_ne!(a.expose(), other_pass.expose());
        let mut salted = p.clone();
        salted.salt = "ff112233445566778899aabbccddeeff".to_owned();
        assert_ne!(
            a.expose(),
            derive_key(b"correct horse battery", &salted)
                .unwrap()
                .expose()
        );
        let mut costlier = p;
        costlier.iterations = 2;
        assert_ne!(
            a.expose(),
            derive_key(b"correct horse battery", &costlier)
                .unwrap()
                .expose()
        );
    }

    #[test]
    fn generated_params_use_owasp_defaults() {
        let p = PassphraseParams::generate().unwrap();
        assert_eq!(p.salt.len(), 32);
        assert_eq!(hex::decode(&p.salt).unwrap().len(), 16);
        assert_eq!((p.memory_kib, p.iterations, p.parallelism), (19456, 2, 1));
        assert_ne!(p.salt, PassphraseParams::generate().unwrap().salt);
        assert!(derive_key(b"a long enough passphrase", &p).is_ok());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PassphraseParams>(&json).unwrap(), p);
    }

    #[test]
    fn bad_stored_params_are_reported() {
        let mut p = fast_params();
        p.salt = "abcd".to_owned();
        let err = derive_key(b"a long enough passphrase", &p).err().unwrap();
        assert_eq!(
            err,
            UnsealError::InvalidSalt {
                salt: "abcd".to_owned()
            }
        );
        let mut p = fast_params();
        p.memory_kib = 1;
        assert!(matches!(
            derive_key(b"a long enough passphrase", &p).err().unwrap(),
            UnsealError::InvalidParams { memory_kib: 1, .. }
        ));
        let mut p = fast_params();
        p.memory_kib = MAX_MEMORY_KIB + 1;
        assert!(matches!(
            derive_key(b"a long enough passphrase", &p).err().unwrap(),
            UnsealError::InvalidParams { reason, .. } if reason.contains("above the limit")
        ));
        let mut p = fast_params();
        p.iterations = 0;
        assert!(matches!(
            derive_key(b"a long enough passphrase", &p).err().unwrap(),
            UnsealError::InvalidParams { iterations: 0, .. }
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,80}") {
            let _ = KeyShare::parse(&text);
        }

        #[test]
        fn parse_rejects_changed_character(
            pos in 8usize..58,
            replacement in proptest::sample::select(ALPHABET.chars().collect::<Vec<_>>()),
            seed in any::<u8>(),
        ) {
            let shares = split_key(&key_from(seed), 2, 2).unwrap();
            let text = shares[0].encode();
            prop_assume!(text.as_bytes()[pos] != replacement as u8);
            let mut typo = text.to_string();
            typo.replace_range(pos..=pos, &replacement.to_string());
            let is_checksum_error =
                matches!(KeyShare::parse(&typo), Err(UnsealError::ShareChecksum { .. }));
            prop_assert!(is_checksum_error);
        }

        #[test]
        fn any_two_of_three_rebuild(seed in any::<u8>(), skip in 0usize..3) {
            let key = key_from(seed);
            let shares = split_key(&key, 3, 2).unwrap();
            let pick: Vec<usize> = (0..3).filter(|&i| i != skip).collect();
            let back = combine_shares(&reparse(&shares, &pick)).unwrap();
            prop_assert_eq!(back.expose(), key.expose());
        }
    }
}

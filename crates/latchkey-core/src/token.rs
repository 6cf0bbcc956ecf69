//! Opaque bearer tokens in a fixed, recognisable text form.
//!
//! Layout (53 ASCII characters): a 4-character prefix (`lkt_` or `lks_`), 43 base62
//! characters holding 32 random bytes as a big-endian number left-padded with `0`, and 6
//! base62 characters holding the CRC32 of prefix and body. The fixed prefix and checksum
//! let secret scanners find tokens with few false positives, and let [`RawToken::parse`]
//! reject a mistyped or truncated token before any lookup. The server stores only
//! [`TokenHash`], never the token.

use zeroize::Zeroizing;

use crate::crypto::{CryptoError, random_bytes, sha256};

/// Digits, then upper case, then lower case: `0` is the zero digit used for padding.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const PREFIX_LEN: usize = 4;
const BODY_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// Characters in every token.
pub const TOKEN_LEN: usize = PREFIX_LEN + BODY_LEN + CHECKSUM_LEN;
/// Prefix of token accessors.
pub const ACCESSOR_PREFIX: &str = "tok_";
const ACCESSOR_RANDOM_LEN: usize = 16;

/// Failures while generating or reading tokens and token hashes. Messages never contain
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    /// Random generation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The text starts with neither `lkt_` nor `lks_`.
    #[error(
        "the token has an unknown prefix: latchkey tokens start with `lkt_` (tokens) or `lks_` (service keys); check that the whole token was copied"
    )]
    UnknownPrefix,
    /// The text has the wrong number of characters.
    #[error(
        "the token has {len} characters but latchkey tokens have {expected}: it was truncated or has extra characters; copy it again"
    )]
    WrongLength {
        /// Characters received.
        len: usize,
        /// Characters in every token.
        expected: usize,
    },
    /// A character after the prefix is not base62.
    #[error(
        "the token has an invalid character at position {position} (only 0-9, A-Z and a-z appear after the prefix): it was mistyped; copy it again"
    )]
    InvalidCharacter {
        /// 1-based character position.
        position: usize,
    },
    /// The checksum does not match.
    #[error("the token checksum does not match: it was mistyped or truncated; copy it again")]
    ChecksumMismatch,
    /// A stored token hash is not 64 hex characters. The input is not echoed, in case a
    /// token was passed where its hash belongs.
    #[error(
        "the token hash is not 64 hexadecimal characters (it has {len} characters); the stored token record is damaged, or a token was given where its hash belongs"
    )]
    InvalidHashHex {
        /// Characters in the rejected input.
        len: usize,
    },
}

/// Purpose of a token, visible in its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A person's or session's token, prefix `lkt_`.
    Token,
    /// A long-lived service key, prefix `lks_`.
    ServiceKey,
}

impl TokenKind {
    /// Returns the 4-character prefix of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Token => "lkt_",
            TokenKind::ServiceKey => "lks_",
        }
    }

    fn from_prefix(prefix: &str) -> Option<TokenKind> {
        [TokenKind::Token, TokenKind::ServiceKey]
            .into_iter()
            .find(|k| k.prefix() == prefix)
    }
}

/// A token's full text. Zeroized on drop; no `Debug` or `Display`, so reading it takes an
/// explicit [`RawToken::expose`].
pub struct RawToken {
    text: Zeroizing<String>,
    kind: TokenKind,
}

impl RawToken {
    /// Generates a token of `kind` with 256 random bits.
    ///
    /// # Errors
    /// [`TokenFormatError::Crypto`] when the random generator fails.
    pub fn generate(kind: TokenKind) -> Result<RawToken, TokenFormatError> {
        let bytes = Zeroizing::new(random_bytes::<32>()?);
        let mut text = Zeroizing::new(String::with_capacity(TOKEN_LEN));
        text.push_str(kind.prefix());
        let body = base62_fixed::<BODY_LEN>(&*bytes);
        text.push_str(std::str::from_utf8(&*body).unwrap_or_default());
        let checksum = checksum_chars(&text);
        text.push_str(std::str::from_utf8(&checksum).unwrap_or_default());
        Ok(RawToken { text, kind })
    }

    /// Checks prefix, length, characters and checksum, in that order. Surrounding
    /// whitespace is ignored.
    ///
    /// # Errors
    /// [`TokenFormatError::UnknownPrefix`], [`TokenFormatError::WrongLength`],
    /// [`TokenFormatError::InvalidCharacter`] and [`TokenFormatError::ChecksumMismatch`].
    pub fn parse(text: &str) -> Result<RawToken, TokenFormatError> {
        let text = text.trim();
        let kind = text
            .get(..PREFIX_LEN)
            .and_then(TokenKind::from_prefix)
            .ok_or(TokenFormatError::UnknownPrefix)?;
        let len = text.chars().count();
        if len != TOKEN_LEN {
            return Err(TokenFormatError::WrongLength {
                len,
                expected: TOKEN_LEN,
            });
        }
        if let Some(offset) = text[PREFIX_LEN..]
            .bytes()
            .position(|b| !b.is_ascii_alphanumeric())
        {
            return Err(TokenFormatError::InvalidCharacter {
                position: PREFIX_LEN + offset + 1,
            });
        }
        // Every character is ASCII from here on, so byte offsets are character offsets.
        let (signed, checksum) = text.split_at(PREFIX_LEN + BODY_LEN);
        if checksum.as_bytes() != checksum_chars(signed).as_slice() {
            return Err(TokenFormatError::ChecksumMismatch);
        }
        Ok(RawToken {
            text: Zeroizing::new(text.to_owned()),
            kind,
        })
    }

    /// Returns the full token text, to send to its holder once.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Returns the kind named by the prefix.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// Computes the SHA-256 of the full token text, the only form the server stores.
    pub fn hash(&self) -> TokenHash {
        TokenHash(sha256(self.text.as_bytes()))
    }
}

/// SHA-256 of a token's full text. Tokens carry 256 random bits, so an unsalted fast hash
/// is enough: there is nothing to guess.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Formats the hash as 64 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    ///
    /// # Errors
    /// [`TokenFormatError::InvalidHashHex`] for anything else.
    pub fn from_hex(s: &str) -> Result<TokenHash, TokenFormatError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| TokenFormatError::InvalidHashHex {
            len: s.chars().count(),
        })?;
        Ok(TokenHash(out))
    }
}

/// Generates a public token id for listing and revoking: `tok_` and 16 base62 characters
/// (about 95 random bits). It is not a credential.
///
/// # Errors
/// [`TokenFormatError::Crypto`] when the random generator fails.
pub fn new_accessor() -> Result<String, TokenFormatError> {
    let mut out = String::with_capacity(ACCESSOR_PREFIX.len() + ACCESSOR_RANDOM_LEN);
    out.push_str(ACCESSOR_PREFIX);
    let mut produced = 0;
    while produced < ACCESSOR_RANDOM_LEN {
        for byte in random_bytes::<32>()? {
            // 248 = 4 * 62, so rejecting the top 8 values keeps every character equally likely.
            if byte < 248 && produced < ACCESSOR_RANDOM_LEN {
                out.push(char::from(BASE62[usize::from(byte % 62)]));
                produced += 1;
            }
        }
    }
    Ok(out)
}

/// Encodes `value` (big-endian) in base62 as exactly `N` digits, left-padded with `0`.
/// Digits beyond `N` are dropped, so callers choose `N` large enough for every value.
fn base62_fixed<const N: usize>(value: &[u8]) -> Zeroizing<[u8; N]> {
    let mut number = Zeroizing::new(value.to_vec());
    let mut digits = Zeroizing::new([BASE62[0]; N]);
    for slot in digits.iter_mut().rev() {
        // Long division of the whole number by 62. The remainder is the next digit.
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            // acc < 62 * 256, so the quotient fits in a byte.
            *byte = u8::try_from(acc / 62).unwrap_or(u8::MAX);
            remainder = acc % 62;
        }
        *slot = BASE62[usize::try_from(remainder).unwrap_or(0)];
    }
    digits
}

fn checksum_chars(signed: &str) -> [u8; CHECKSUM_LEN] {
    let crc = crc32fast::hash(signed.as_bytes());
    *base62_fixed::<CHECKSUM_LEN>(&crc.to_be_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn replace_at(text: &str, pos: usize, c: char) -> String {
        let mut out = text.to_owned();
        out.replace_range(pos..=pos, &c.to_string());
        out
    }

    #[test]
    fn generate_parse_round_trip() {
        for kind in [TokenKind::Token, TokenKind::ServiceKey] {
            let token = RawToken::generate(kind).unwrap();
            assert_eq!(token.expose().len(), TOKEN_LEN);
            assert!(token.expose().starts_with(kind.prefix()));
            assert_eq!(token.kind(), kind);
            let parsed = RawToken::parse(token.expose()).unwrap();
            assert_eq!(parsed.expose(), token.expose());
            assert_eq!(parsed.kind(), kind);
            assert_eq!(parsed.hash(), token.hash());
            let padded = format!(" {}\n", token.expose());
            assert_eq!(RawToken::parse(&padded).unwrap().expose(), token.expose());
        }
    }

    #[test]
    fn tokens_are_unique() {
        let a = RawToken::generate(TokenKind::Token).unwrap();
        let b = RawToken::generate(TokenKind::Token).unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn base62_is_fixed_width_and_exact() {
        assert_eq!(&*base62_fixed::<6>(&[0, 0, 0, 0]), b"000000");
        assert_eq!(&*base62_fixed::<6>(&[0, 0, 0, 61]), b"00000z");
        assert_eq!(&*base62_fixed::<6>(&[0, 0, 0, 62]), b"000010");
        assert_eq!(&*base62_fixed::<6>(&u32::MAX.to_be_bytes()), b"4gfFC3");
        // The largest 256-bit number still fits in 43 digits.
        let max = base62_fixed::<BODY_LEN>(&[0xff; 32]);
        assert_ne!(max[0], b'0');
        assert_eq!(&*base62_fixed::<BODY_LEN>(&[0; 32]), &[b'0'; BODY_LEN]);
    }

    #[test]
    fn checksum_is_crc32_of_prefix_and_body() {
        let token = RawToken::generate(TokenKind::ServiceKey).unwrap();
        let text = token.expose();
        let crc = crc32fast::hash(&text.as_bytes()[..47]);
        assert_eq!(
            &text[47..],
            std::str::from_utf8(&*base62_fixed::<6>(&crc.to_be_bytes())).unwrap()
        );
    }

    #[test]
    fn every_single_character_change_is_detected() {
        let token = RawToken::generate(TokenKind::Token).unwrap();
        let text = token.expose();
        for pos in 0..TOKEN_LEN {
            for &c in BASE62.iter().chain(b"_-") {
                if text.as_bytes()[pos] == c {
                    continue;
                }
                let err = RawToken::parse(&replace_at(text, pos, char::from(c)))
                    .err()
                    .unwrap();
                match pos {
                    0..=3 => assert!(
                        matches!(
                            err,
                            TokenFormatError::UnknownPrefix | TokenFormatError::ChecksumMismatch
                        ),
                        "{pos} {c}: {err}"
                    ),
                    _ if !c.is_ascii_alphanumeric() => assert_eq!(
                        err,
                        TokenFormatError::InvalidCharacter { position: pos + 1 }
                    ),
                    _ => assert_eq!(err, TokenFormatError::ChecksumMismatch, "{pos} {c}"),
                }
            }
        }
    }

    #[test]
    fn changing_the_kind_breaks_the_checksum() {
        let token = RawToken::generate(TokenKind::Token).unwrap();
        let forged = token.expose().replacen("lkt_", "lks_", 1);
        assert_eq!(
            RawToken::parse(&forged).err().unwrap(),
            TokenFormatError::ChecksumMismatch
        );
    }

    #[test]
    fn parse_rejects_wrong_prefix() {
        let token = RawToken::generate(TokenKind::Token).unwrap();
        let text = token.expose();
        let ghp = format!("ghp_{}", &text[4..]);
        let err = RawToken::parse(&ghp).err().unwrap();
        assert_eq!(err, TokenFormatError::UnknownPrefix);
        assert!(!err.to_string().contains(&text[4..12]));
        assert_eq!(
            RawToken::parse("").err().unwrap(),
            TokenFormatError::UnknownPrefix
        );
        assert_eq!(
            RawToken::parse("lk").err().unwrap(),
            TokenFormatError::UnknownPrefix
        );
    }

    #[test]
    fn parse_rejects_wrong_length() {
        let token = RawToken::generate(TokenKind::Token).unwrap();
        let text = token.expose();
        assert_eq!(
            RawToken::parse(&text[..TOKEN_LEN - 1]).err().unwrap(),
            TokenFormatError::WrongLength {
                len: 52,
                expected: 53
            }
        );
        assert_eq!(
            RawToken::parse(&format!("{text}0")).err().unwrap(),
            TokenFormatError::WrongLength {
                len: 54,
                expected: 53
            }
        );

        // A two-byte character keeps the character count, so the charset check reports it.
        let accented = replace_at(text, 10, 'é');
        assert_eq!(
            RawToken::parse(&accented).err().unwrap(),
            TokenFormatError::InvalidCharacter { position: 11 }
        );
    }

    #[test]
    fn messages_never_echo_the_token() {
        let token = RawToken::generate(TokenKind::Token).unwrap();
        let text = token.expose();
        let body = &text[4..47];
        for bad in [
            replace_at(text, 20, 'x'),
            replace_at(text, 20, '!'),
            text[..30].to_owned(),
            format!("xxx_{}", &text[4..]),
        ] {
            let message = RawToken::parse(&bad).err().unwrap().to_string();
            assert!(!message.contains(&body[..8]), "{message}");
            assert!(!message.contains(&body[20..28]), "{message}");
        }
        assert_eq!(
            TokenFormatError::ChecksumMismatch.to_string(),
            "the token checksum does not match: it was mistyped or truncated; copy it again"
        );
    }

    #[test]
    fn hash_is_stable_sha256_hex() {
        let token = RawToken::generate(TokenKind::ServiceKey).unwrap();
        let hash = token.hash();
        assert_eq!(hash, RawToken::parse(token.expose()).unwrap().hash());
        assert_eq!(hash.0, sha256(token.expose().as_bytes()));
        let hex = hash.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(TokenHash::from_hex(&hex).unwrap(), hash);
        assert_eq!(TokenHash::from_hex(&hex.to_uppercase()).unwrap(), hash);
        assert_ne!(
            hash,
            RawToken::generate(TokenKind::ServiceKey).unwrap().hash()
        );
    }

    #[test]
    fn bad_hash_hex_is_reported() {
        for (bad, len) in [
            ("", 0),
            ("abc", 3),
            (&*"g".repeat(64), 64),
            (&*"a".repeat(66), 66),
        ] {
            assert_eq!(
                TokenHash::from_hex(bad).err().unwrap(),
                TokenFormatError::InvalidHashHex { len }
            );
        }
        let token = RawToken::generate(TokenKind::Token).unwrap();
        let message = TokenHash::from_hex(token.expose())
            .err()
            .unwrap()
            .to_string();
        assert!(!message.contains(&token.expose()[4..12]), "{message}");
    }

    #[test]
    fn accessors_have_the_documented_shape() {
        let a = new_accessor().unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("tok_"));
        assert!(a[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, new_accessor().unwrap());
    }

    proptest! {
        #[test]
        fn any_single_character_change_is_rejected(
            pos in 0usize..TOKEN_LEN,
            replacement in any::<char>(),
            service in any::<bool>(),
        ) {
            let kind = if service { TokenKind::ServiceKey } else { TokenKind::Token };
            let token = RawToken::generate(kind).unwrap();
            let text = token.expose();
            prop_assume!(!text[pos..].starts_with(replacement));
            let err = RawToken::parse(&replace_at(text, pos, replacement)).err().unwrap();
            if pos < PREFIX_LEN {
                prop_assert!(matches!(
                    err,
                    TokenFormatError::UnknownPrefix | TokenFormatError::ChecksumMismatch
                ));
            } else if replacement.is_ascii_alphanumeric() {
                prop_assert_eq!(err, TokenFormatError::ChecksumMismatch);
            } else if pos == TOKEN_LEN - 1 && replacement.is_whitespace() {
                // Trailing whitespace is trimmed, leaving a token one character short.
                prop_assert_eq!(err, TokenFormatError::WrongLength { len: 52, expected: 53 });
            } else {
                prop_assert_eq!(err, TokenFormatError::InvalidCharacter { position: pos + 1 });
            }
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,70}") {
            let _ = RawToken::parse(&text);
        }

        #[test]
        fn parse_never_panics_near_the_format(tail in "[0-9A-Za-z_é]{40,52}", service in any::<bool>()) {
            let prefix = if service { "lks_" } else { "lkt_" };
            let _ = RawToken::parse(&format!("{prefix}{tail}"));
        }
    }
}

//! The plaintext layout of a secret version, before it is sealed.
//!
//! Layout: field count (u32 BE), then per field its name and value, each as a u32 BE byte
//! length followed by the bytes. Values are arbitrary bytes.

use latchkey_core::crypto::{self, Key256, aad};
use zeroize::Zeroizing;

/// One field of a secret version. Holds a secret value: no `Debug`, zeroized on drop.
pub struct Field {
    pub name: String,
    pub value: Zeroizing<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    #[error("secret version is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("secret version did not open: {0}")]
    Crypto(String),
}

fn encode(fields: &[Field]) -> Zeroizing<Vec<u8>> {
    let size: usize = fields
        .iter()
        .map(|f| 8 + f.name.len() + f.value.len())
        .sum();
    let mut out = Zeroizing::new(Vec::with_capacity(4 + size));
    out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    for field in fields {
        out.extend_from_slice(&(field.name.len() as u32).to_be_bytes());
        out.extend_from_slice(field.name.as_bytes());
        out.extend_from_slice(&(field.value.len() as u32).to_be_bytes());
        out.extend_from_slice(&field.value);
    }
    out
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], SealingError> {
    if input.len() < n {
        return Err(SealingError::Corrupt("truncated"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_u32(input: &mut &[u8]) -> Result<usize, SealingError> {
    let bytes = take(input, 4)?;
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    Ok(u32::from_be_bytes(array) as usize)
}

fn decode(mut input: &[u8]) -> Result<Vec<Field>, SealingError> {
    let count = take_u32(&mut input)?;
    let mut fields = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let name_len = take_u32(&mut input)?;
        let name = std::str::from_utf8(take(&mut input, name_len)?)
            .map_err(|_| SealingError::Corrupt("field name is not UTF-8"))?
            .to_string();
        let value_len = take_u32(&mut input)?;
        let value = Zeroizing::new(take(&mut input, value_len)?.to_vec());
        fields.push(Field { name, value });
    }
    if !input.is_empty() {
        return Err(SealingError::Corrupt("trailing bytes"));
    }
    Ok(fields)
}

pub fn seal_fields(
    key: &Key256,
    vault_id: &str,
    secret_id: &str,
    version: u32,
    fields: &[Field],
) -> Result<Vec<u8>, SealingError> {
    let plaintext = encode(fields);
    crypto::seal(
        key,
        &aad::secret_version(vault_id, secret_id, version),
        &plaintext,
    )
    .map_err(|e| SealingError::Crypto(e.to_string()))
}

pub fn open_fields(
    key: &Key256,
    vault_id: &str,
    secret_id: &str,
    version: u32,
    sealed: &[u8],
) -> Result<Vec<Field>, SealingError> {
    let plaintext = crypto::open(
        key,
        &aad::secret_version(vault_id, secret_id, version),
        sealed,
    )
    .map_err(|e| SealingError::Crypto(e.to_string()))?;
    decode(&plaintext)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field(name: &str, value: &[u8]) -> Field {
        Field {
            name: name.into(),
            value: Zeroizing::new(value.to_vec()),
        }
    }

    #[test]
    fn fields_round_trip_binary_values() {
        let key = Key256::generate().unwrap();
        let fields = vec![
            field("password", b"s3cr\0t\xff"),
            field("empty", b""),
            field("clé", "é".as_bytes()),
        ];
        let sealed = seal_fields(&key, "v1", "s1", 3, &fields).unwrap();
        let opened = open_fields(&key, "v1", "s1", 3, &sealed).unwrap();
        assert_eq!(opened.len(), 3);
        assert_eq!(opened[0].value.as_slice(), b"s3cr\0t\xff");
        assert_eq!(opened[1].value.as_slice(), b"");
        assert_eq!(opened[2].name, "clé");
    }

    #[test]
    fn ciphertext_moved_to_another_row_fails() {
        let key = Key256::generate().unwrap();
        let sealed = seal_fields(&key, "v1", "s1", 1, &[field("a", b"b")]).unwrap();
        assert!(matches!(
            open_fields(&key, "v1", "s1", 2, &sealed),
            Err(SealingError::Crypto(_))
        ));
        assert!(matches!(
            open_fields(&key, "v1", "s2", 1, &sealed),
            Err(SealingError::Crypto(_))
        ));
        assert!(matches!(
            open_fields(&key, "v2", "s1", 1, &sealed),
            Err(SealingError::Crypto(_))
        ));
    }

    #[test]
    fn truncated_plaintext_is_corrupt() {
        assert!(matches!(
            decode(&[0, 0, 0, 1, 0, 0]),
            Err(SealingError::Corrupt("truncated"))
        ));
        assert!(matches!(
            decode(&[0, 0, 0, 0, 9]),
            Err(SealingError::Corrupt("trailing bytes"))
        ));
    }
}

//! The seal: the root key, the unseal key that wraps it, and the vault data keys.
//!
//! The root key lives only in memory, and only while the server is unsealed. The store
//! keeps it wrapped by the unseal key (a key file in dev mode, a passphrase through
//! Argon2id, or Shamir shares), together with a description of how to unwrap it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use latchkey_core::crypto::{self, Key256, aad};
use latchkey_core::unseal::{self, KeyShare, PassphraseParams};
use serde::{Deserialize, Serialize};

/// Source of the unseal key, stored as JSON in the store's `seal` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum SealConfig {
    /// Dev mode: the unseal key is a file in the data directory.
    KeyFile { wrapped_root_key: String },
    /// The unseal key is derived from an operator's passphrase with Argon2id.
    Passphrase {
        wrapped_root_key: String,
        params: PassphraseParams,
    },
    /// The unseal key is split into `shares` Shamir shares; any `threshold` rebuild it.
    Shamir {
        wrapped_root_key: String,
        shares: u8,
        threshold: u8,
    },
}

impl SealConfig {
    fn wrapped_root_key(&self) -> Result<Vec<u8>, SealError> {
        let text = match self {
            SealConfig::KeyFile { wrapped_root_key }
            | SealConfig::Passphrase {
                wrapped_root_key, ..
            }
            | SealConfig::Shamir {
                wrapped_root_key, ..
            } => wrapped_root_key,
        };
        hex::decode(text).map_err(|_| SealError::Corrupt("wrapped root key is not hex".into()))
    }

    pub fn mode(&self) -> &'static str {
        match self {
            SealConfig::KeyFile { .. } => "key_file",
            SealConfig::Passphrase { .. } => "passphrase",
            SealConfig::Shamir { .. } => "shamir",
        }
    }

    pub fn threshold(&self) -> u8 {
        match self {
            SealConfig::Shamir { threshold, .. } => *threshold,
            _ => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the unseal key is wrong: the root key did not open with it")]
    WrongKey,
    #[error("{0}")]
    Invalid(String),
    #[error("seal configuration is corrupt: {0}")]
    Corrupt(String),
    #[error("cryptographic failure: {0}")]
    Crypto(String),
}

/// Progress of a Shamir unseal.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnsealProgress {
    pub sealed: bool,
    pub progress: u8,
    pub threshold: u8,
}

/// The root key slot, shared with the audit writer so it can open the audit signing key
/// while the server is unsealed.
pub type RootCell = Arc<RwLock<Option<Arc<Key256>>>>;

#[derive(Default)]
pub struct Keyring {
    root: RootCell,
    vault_keys: RwLock<HashMap<String, Arc<Key256>>>,
    pending_shares: Mutex<Vec<KeyShare>>,
}

/// Creates a fresh root key wrapped under `unseal_key`, returning the root key and the
/// hex text to store.
pub fn new_root_key(unseal_key: &Key256) -> Result<(Key256, String), SealError> {
    let root = Key256::generate().map_err(|e| SealError::Crypto(e.to_string()))?;
    let wrapped = crypto::wrap_key(unseal_key, &aad::root_key(), &root)
        .map_err(|e| SealError::Crypto(e.to_string()))?;
    Ok((root, hex::encode(wrapped)))
}

impl Keyring {
    /// Returns the shared root key slot, which is empty while sealed.
    pub fn root_cell(&self) -> RootCell {
        Arc::clone(&self.root)
    }

    pub fn is_sealed(&self) -> bool {
        self.root.read().map(|g| g.is_none()).unwrap_or(true)
    }

    pub fn root(&self) -> Option<Arc<Key256>> {
        self.root.read().ok().and_then(|g| g.clone())
    }

    /// Opens the root key with the unseal key and unseals.
    pub fn unseal_with_key(
        &self,
        config: &SealConfig,
        unseal_key: &Key256,
    ) -> Result<(), SealError> {
        let wrapped = config.wrapped_root_key()?;
        let root = crypto::unwrap_key(unseal_key, &aad::root_key(), &wrapped)
            .map_err(|_| SealError::WrongKey)?;
        self.install_root(root);
        Ok(())
    }

    pub fn install_root(&self, root: Key256) {
        if let Ok(mut guard) = self.root.write() {
            *guard = Some(Arc::new(root));
        }
        if let Ok(mut pending) = self.pending_shares.lock() {
            pending.clear();
        }
    }

    /// Accepts one unseal input: the passphrase, or one Shamir share.
    pub fn submit(&self, config: &SealConfig, input: &str) -> Result<UnsealProgress, SealError> {
        match config {
            SealConfig::KeyFile { .. } => Err(SealError::Invalid(
                "this server unseals from its key file at start; restart it instead".into(),
            )),
            SealConfig::Passphrase { params, .. } => {
                let key = unseal::derive_key(input.as_bytes(), params)
                    .map_err(|e| SealError::Invalid(e.to_string()))?;
                self.unseal_with_key(config, &key)?;
                Ok(UnsealProgress {
                    sealed: false,
                    progress: 0,
                    threshold: 1,
                })
            }
            SealConfig::Shamir { threshold, .. } => {
                let share =
                    KeyShare::parse(input.trim()).map_err(|e| SealError::Invalid(e.to_string()))?;
                let mut pending = self
                    .pending_shares
                    .lock()
                    .map_err(|_| SealError::Crypto("unseal state poisoned".into()))?;
                if pending.iter().any(|s| s.index() == share.index()) {
                    return Err(SealError::Invalid(format!(
                        "share number {} was already submitted; submit a different share",
                        share.index()
                    )));
                }
                pending.push(share);
                let progress = u8::try_from(pending.len()).unwrap_or(u8::MAX);
                if progress < *threshold {
                    return Ok(UnsealProgress {
                        sealed: true,
                        progress,
                        threshold: *threshold,
                    });
                }
                let key = unseal::combine_shares(&pending);
                pending.clear();
                drop(pending);
                let key = key.map_err(|e| SealError::Invalid(e.to_string()))?;
                self.unseal_with_key(config, &key)?;
                Ok(UnsealProgress {
                    sealed: false,
                    progress: 0,
                    threshold: *threshold,
                })
            }
        }
    }

    pub fn progress(&self, config: Option<&SealConfig>) -> UnsealProgress {
        let progress = self
            .pending_shares
            .lock()
            .map(|p| u8::try_from(p.len()).unwrap_or(u8::MAX))
            .unwrap_or(0);
        UnsealProgress {
            sealed: self.is_sealed(),
            progress,
            threshold: config.map(SealConfig::threshold).unwrap_or(0),
        }
    }

    pub fn reset_progress(&self) {
        if let Ok(mut pending) = self.pending_shares.lock() {
            pending.clear();
        }
    }

    /// Forgets every key held in memory.
    pub fn seal(&self) {
        if let Ok(mut guard) = self.root.write() {
            *guard = None;
        }
        if let Ok(mut keys) = self.vault_keys.write() {
            keys.clear();
        }
        self.reset_progress();
    }

    /// Creates a data key for a new vault, returning it and its wrapped form.
    pub fn new_vault_key(&self, vault_id: &str) -> Result<(Arc<Key256>, Vec<u8>), SealError> {
        let root = self
            .root()
            .ok_or_else(|| SealError::Invalid("sealed".into()))?;
        let key = Key256::generate().map_err(|e| SealError::Crypto(e.to_string()))?;
        let wrapped = crypto::wrap_key(&root, &aad::vault_key(vault_id), &key)
            .map_err(|e| SealError::Crypto(e.to_string()))?;
        let key = Arc::new(key);
        if let Ok(mut keys) = self.vault_keys.write() {
            keys.insert(vault_id.to_string(), Arc::clone(&key));
        }
        self.forget_if_sealed()?;
        Ok((key, wrapped))
    }

    /// Returns a vault's data key, unwrapping and caching it on first use.
    pub fn vault_key(&self, vault_id: &str, wrapped: &[u8]) -> Result<Arc<Key256>, SealError> {
        if let Some(key) = self
            .vault_keys
            .read()
            .ok()
            .and_then(|k| k.get(vault_id).cloned())
        {
            return Ok(key);
        }
        let root = self
            .root()
            .ok_or_else(|| SealError::Invalid("sealed".into()))?;
        let key = crypto::unwrap_key(&root, &aad::vault_key(vault_id), wrapped)
            .map_err(|e| SealError::Corrupt(format!("vault key for `{vault_id}`: {e}")))?;
        let key = Arc::new(key);
        if let Ok(mut keys) = self.vault_keys.write() {
            keys.insert(vault_id.to_string(), Arc::clone(&key));
        }
        self.forget_if_sealed()?;
        Ok(key)
    }

    /// Clears the vault keys when a seal happened while one was being unwrapped, so no key
    /// stays cached on a sealed server.
    fn forget_if_sealed(&self) -> Result<(), SealError> {
        if !self.is_sealed() {
            return Ok(());
        }
        if let Ok(mut keys) = self.vault_keys.write() {
            keys.clear();
        }
        Err(SealError::Invalid("sealed".into()))
    }
}

//! Caches of the rows a secret read needs: the vault by name, the secret by vault and
//! name, and sealed secret versions. With them a read of a recently read secret makes no
//! database query before its audit append. Every query through the SQLite pool hands the
//! statement to a connection thread and back, and on the read path those hand-offs cost
//! more CPU than the Cedar decision and the decryption together.
//!
//! Vault and secret rows are trusted for at most [`ROW_LIFETIME`], like cached token
//! lookups. This server drops a secret's entries whenever it writes or deletes that
//! secret, so its own reads always see its own writes. The lifetime bounds how long a
//! write made by another server on the same database takes to apply here.
//!
//! A secret version never changes once written, so cached versions need no lifetime. A
//! deleted secret's versions become unreachable as soon as its secret row is gone.
//! Versions hold ciphertext only: the values stay sealed under the vault key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use latchkey_store::{SecretRow, SecretVersionRow, VaultRow};

/// How long a cached vault or secret row is trusted.
pub const ROW_LIFETIME: Duration = Duration::from_secs(1);

/// Entries per map beyond which the map is emptied rather than grown, to bound memory.
const MAX_ENTRIES: usize = 20_000;

struct Timed<T> {
    row: Arc<T>,
    loaded_at: Instant,
}

impl<T> Timed<T> {
    fn fresh(&self) -> Option<Arc<T>> {
        (self.loaded_at.elapsed() < ROW_LIFETIME).then(|| Arc::clone(&self.row))
    }
}

#[derive(Default)]
struct Entries {
    vaults: HashMap<String, Timed<VaultRow>>,
    /// Keyed by vault id and secret name.
    secrets: HashMap<(String, String), Timed<SecretRow>>,
    /// Keyed by secret id and version number.
    versions: HashMap<(String, u32), Arc<SecretVersionRow>>,
    /// Incremented by every invalidation, so that a row read from the store before a
    /// write is not cached after it.
    generation: u64,
}

/// The vault, secret and secret version rows of recent reads.
#[derive(Default)]
pub struct SecretCache {
    entries: RwLock<Entries>,
}

fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, value);
}

impl SecretCache {
    /// Returns the generation to pass to the `insert_*` methods after a store read.
    pub fn generation(&self) -> u64 {
        self.entries.read().map(|e| e.generation).unwrap_or(0)
    }

    pub fn vault(&self, name: &str) -> Option<Arc<VaultRow>> {
        self.entries.read().ok()?.vaults.get(name)?.fresh()
    }

    pub fn secret(&self, vault_id: &str, name: &str) -> Option<Arc<SecretRow>> {
        let entries = self.entries.read().ok()?;
        entries
            .secrets
            .get(&(vault_id.to_string(), name.to_string()))?
            .fresh()
    }

    pub fn version(&self, secret_id: &str, version: u32) -> Option<Arc<SecretVersionRow>> {
        let entries = self.entries.read().ok()?;
        entries
            .versions
            .get(&(secret_id.to_string(), version))
            .cloned()
    }

    /// Caches a vault read from the store, unless an invalidation happened since
    /// `generation`.
    pub fn insert_vault(&self, row: Arc<VaultRow>, generation: u64) {
        self.with_generation(generation, |entries| {
            let timed = Timed {
                row: Arc::clone(&row),
                loaded_at: Instant::now(),
            };
            insert_bounded(&mut entries.vaults, row.name.clone(), timed);
        });
    }

    /// Caches a secret read from the store, unless an invalidation happened since
    /// `generation`.
    pub fn insert_secret(&self, row: Arc<SecretRow>, generation: u64) {
        self.with_generation(generation, |entries| {
            let key = (row.vault_id.clone(), row.name.clone());
            let timed = Timed {
                row: Arc::clone(&row),
                loaded_at: Instant::now(),
            };
            insert_bounded(&mut entries.secrets, key, timed);
        });
    }

    /// Caches a secret version read from the store, unless an invalidation happened since
    /// `generation`.
    pub fn insert_version(&self, row: Arc<SecretVersionRow>, generation: u64) {
        self.with_generation(generation, |entries| {
            let key = (row.secret_id.clone(), row.version);
            insert_bounded(&mut entries.versions, key, row);
        });
    }

    /// Drops the cached row of secret `name` in vault `vault_id` and its versions. Call it
    /// after the store has written or deleted the secret.
    pub fn invalidate_secret(&self, vault_id: &str, name: &str, secret_id: &str) {
        if let Ok(mut entries) = self.entries.write() {
            entries
                .secrets
                .remove(&(vault_id.to_string(), name.to_string()));
            entries.versions.retain(|(id, _), _| id != secret_id);
            entries.generation += 1;
        }
    }

    fn with_generation(&self, generation: u64, insert: impl FnOnce(&mut Entries)) {
        if let Ok(mut entries) = self.entries.write()
            && entries.generation == generation
        {
            insert(&mut entries);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn secret(version: u32) -> Arc<SecretRow> {
        Arc::new(SecretRow {
            id: "sec_1".into(),
            vault_id: "vlt_1".into(),
            name: "db".into(),
            tags: Default::default(),
            current_version: version,
            created_at: 0,
            updated_at: 0,
        })
    }

    fn version(number: u32) -> Arc<SecretVersionRow> {
        Arc::new(SecretVersionRow {
            secret_id: "sec_1".into(),
            version: number,
            field_names: vec!["password".into()],
            ciphertext: vec![1, 2, 3],
            created_at: 0,
            created_by: "User::\"root\"".into(),
        })
    }

    #[test]
    fn cache_returns_inserted_rows() {
        let cache = SecretCache::default();
        let generation = cache.generation();
        cache.insert_secret(secret(1), generation);
        cache.insert_version(version(1), generation);

        assert_eq!(cache.secret("vlt_1", "db").unwrap().current_version, 1);
        assert_eq!(cache.version("sec_1", 1).unwrap().ciphertext, vec![1, 2, 3]);
        assert!(cache.secret("vlt_1", "other").is_none());
        assert!(cache.version("sec_1", 2).is_none());
    }

    #[test]
    fn invalidation_drops_secret_and_versions() {
        let cache = SecretCache::default();
        let generation = cache.generation();
        cache.insert_secret(secret(1), generation);
        cache.insert_version(version(1), generation);

        cache.invalidate_secret("vlt_1", "db", "sec_1");

        assert!(cache.secret("vlt_1", "db").is_none());
        assert!(cache.version("sec_1", 1).is_none());
    }

    #[test]
    fn read_before_invalidation_is_not_cached() {
        let cache = SecretCache::default();
        // A reader took the generation, then a writer changed the secret.
        let stale_generation = cache.generation();
        cache.invalidate_secret("vlt_1", "db", "sec_1");

        cache.insert_secret(secret(1), stale_generation);
        assert!(cache.secret("vlt_1", "db").is_none());

        cache.insert_secret(secret(2), cache.generation());
        assert_eq!(cache.secret("vlt_1", "db").unwrap().current_version, 2);
    }

    #[test]
    fn full_map_is_emptied_not_grown() {
        let cache = SecretCache::default();
        let generation = cache.generation();
        for n in 0..MAX_ENTRIES as u32 + 1 {
            cache.insert_version(
                Arc::new(SecretVersionRow {
                    version: n,
                    ..(*version(0)).clone()
                }),
                generation,
            );
        }
        let entries = cache.entries.read().unwrap();
        assert_eq!(entries.versions.len(), 1);
    }
}

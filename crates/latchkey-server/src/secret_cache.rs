//! Caches of the rows a secret read needs: the vault by name, the secret by vault and
//! name, and sealed secret versions. With them a read of a recently read secret makes no
//! database query before its audit append. Every query through the SQLite pool hands the
//! statement to a connection thread and back, and on the read path those hand-offs cost
//! more CPU than the Cedar decision and the decryption together. A read that misses the
//! cache makes one query, [`SecretCache::load`], for the vault, the secret and its current
//! version together. Misses that arrive while such a query runs wait for it to end, then
//! go to the store as one query for all of them. With many secrets read at random most
//! reads miss, and a query per miss would cost each read a hand-off to the database thread
//! and a fresh page cache there.
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
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use latchkey_store::{SecretForRead, SecretRow, SecretVersionRow, Store, StoreResult, VaultRow};
use tokio::sync::{mpsc, oneshot};

/// How long a cached vault or secret row is trusted.
pub const ROW_LIFETIME: Duration = Duration::from_secs(1);

/// Entries kept per generation of each map. A map keeps two generations: when the current
/// one is full it replaces the previous one. That bounds memory (with 100,000 secrets read
/// at random, most reads miss whatever the bound, and each miss costs one query) and keeps
/// the rows read most recently.
const GENERATION_ENTRIES: usize = 2048;

/// Maximum number of misses read in one query.
const MAX_BATCH: usize = 128;

/// Capacity of the queue of misses waiting for the batch reader.
const MISS_QUEUE: usize = 1024;

struct Timed<T> {
    row: Arc<T>,
    loaded_at: Instant,
}

impl<T> Timed<T> {
    fn fresh(&self) -> Option<Arc<T>> {
        (self.loaded_at.elapsed() < ROW_LIFETIME).then(|| Arc::clone(&self.row))
    }
}

/// Entries by a hash of their key, in two generations. Each entry contains its key, so a
/// lookup compares it and a hash collision is a miss. A lookup allocates nothing.
struct Recent<V> {
    current: HashMap<u64, V>,
    previous: HashMap<u64, V>,
}

impl<V> Default for Recent<V> {
    fn default() -> Recent<V> {
        Recent {
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }
}

impl<V> Recent<V> {
    fn get(&self, hash: u64, is_key: impl Fn(&V) -> bool) -> Option<&V> {
        self.current
            .get(&hash)
            .filter(|v| is_key(v))
            .or_else(|| self.previous.get(&hash).filter(|v| is_key(v)))
    }

    fn insert(&mut self, hash: u64, value: V) {
        if self.current.len() >= GENERATION_ENTRIES && !self.current.contains_key(&hash) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&hash);
        self.current.insert(hash, value);
    }

    fn retain(&mut self, keep: impl Fn(&V) -> bool) {
        self.current.retain(|_, v| keep(v));
        self.previous.retain(|_, v| keep(v));
    }
}

#[derive(Default)]
struct Entries {
    /// By vault name.
    vaults: Recent<Timed<VaultRow>>,
    /// By vault id and secret name.
    secrets: Recent<Timed<SecretRow>>,
    /// By secret id and version number.
    versions: Recent<Arc<SecretVersionRow>>,
    /// Incremented by every invalidation, so that a row read from the store before a
    /// write is not cached after it.
    generation: u64,
}

/// Tells each miss of a failed batch to query alone.
fn fail_batch(batch: &mut Vec<Miss>) {
    for miss in batch.drain(..) {
        let _ = miss.reply.send(None);
    }
}

/// The vault, secret and secret version rows of recent reads.
#[derive(Default)]
pub struct SecretCache {
    entries: RwLock<Entries>,
    hasher: RandomState,
    /// Sender of misses to the task that reads them in batches. The first miss starts the task.
    misses: OnceLock<mpsc::Sender<Miss>>,
}

/// A secret to read from the store, and where to send the result. None as the result
/// means the batch failed, so the reader queries alone and gets its own error.
struct Miss {
    vault: String,
    secret: String,
    reply: oneshot::Sender<Option<Option<SecretForRead>>>,
}

/// Reads the misses sent to it. Each batch contains every miss that arrived while the
/// previous query ran, up to [`MAX_BATCH`]. Ends when the cache is dropped.
async fn read_batches(store: Arc<dyn Store>, mut misses: mpsc::Receiver<Miss>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while misses.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let requested: Vec<(&str, &str)> = batch
            .iter()
            .map(|m| (m.vault.as_str(), m.secret.as_str()))
            .collect();
        let found = store.secrets_for_read(&requested).await;
        drop(requested);
        match found {
            Ok(found) if found.len() == batch.len() => {
                for (miss, found) in batch.drain(..).zip(found) {
                    let _ = miss.reply.send(Some(found));
                }
            }
            Ok(found) => {
                tracing::warn!(
                    requested = batch.len(),
                    returned = found.len(),
                    "batched secret read returned a different number of results, reading each secret alone"
                );
                fail_batch(&mut batch);
            }
            Err(error) => {
                tracing::warn!(%error, secrets = batch.len(), "batched secret read failed, reading each secret alone");
                fail_batch(&mut batch);
            }
        }
    }
}

impl SecretCache {
    fn vault_key(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    fn secret_key(&self, vault_id: &str, name: &str) -> u64 {
        self.hasher.hash_one((vault_id, name))
    }

    fn version_key(&self, secret_id: &str, version: u32) -> u64 {
        self.hasher.hash_one((secret_id, version))
    }

    /// Returns the generation to pass to the `insert_*` methods after a store read.
    pub fn generation(&self) -> u64 {
        self.entries.read().map(|e| e.generation).unwrap_or(0)
    }

    pub fn vault(&self, name: &str) -> Option<Arc<VaultRow>> {
        let key = self.vault_key(name);
        let entries = self.entries.read().ok()?;
        entries.vaults.get(key, |t| t.row.name == name)?.fresh()
    }

    pub fn secret(&self, vault_id: &str, name: &str) -> Option<Arc<SecretRow>> {
        let key = self.secret_key(vault_id, name);
        let entries = self.entries.read().ok()?;
        entries
            .secrets
            .get(key, |t| t.row.vault_id == vault_id && t.row.name == name)?
            .fresh()
    }

    pub fn version(&self, secret_id: &str, version: u32) -> Option<Arc<SecretVersionRow>> {
        let key = self.version_key(secret_id, version);
        let entries = self.entries.read().ok()?;
        entries
            .versions
            .get(key, |row| {
                row.secret_id == secret_id && row.version == version
            })
            .cloned()
    }

    /// Caches a secret version read from the store, unless an invalidation happened since
    /// `generation`.
    pub fn insert_version(&self, row: Arc<SecretVersionRow>, generation: u64) {
        self.insert_rows(generation, None, None, Some(&row));
    }

    /// Caches rows read from the store, unless an invalidation happened since `generation`.
    fn insert_rows(
        &self,
        generation: u64,
        vault: Option<&Arc<VaultRow>>,
        secret: Option<&Arc<SecretRow>>,
        version: Option<&Arc<SecretVersionRow>>,
    ) {
        let vault = vault.map(|row| (self.vault_key(&row.name), row));
        let secret = secret.map(|row| (self.secret_key(&row.vault_id, &row.name), row));
        let version = version.map(|row| (self.version_key(&row.secret_id, row.version), row));
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.generation != generation {
            return;
        }
        let loaded_at = Instant::now();
        if let Some((key, row)) = vault {
            let row = Arc::clone(row);
            entries.vaults.insert(key, Timed { row, loaded_at });
        }
        if let Some((key, row)) = secret {
            let row = Arc::clone(row);
            entries.secrets.insert(key, Timed { row, loaded_at });
        }
        if let Some((key, row)) = version {
            entries.versions.insert(key, Arc::clone(row));
        }
    }

    /// Reads the vault `vault_name`, its secret `secret_name` and that secret's current
    /// version from the store in one query, shared with the misses that arrive meanwhile,
    /// and caches them. Returns None when the vault does not exist, and no secret when the
    /// vault has none of that name.
    pub async fn load(
        &self,
        store: &Arc<dyn Store>,
        vault_name: &str,
        secret_name: &str,
    ) -> StoreResult<Option<(Arc<VaultRow>, Option<Arc<SecretRow>>)>> {
        let generation = self.generation();
        let found = match self.read_in_batch(store, vault_name, secret_name).await {
            Some(found) => found,
            None => store.secret_for_read(vault_name, secret_name).await?,
        };
        let Some(found) = found else {
            return Ok(None);
        };
        let vault = Arc::new(found.vault);
        let secret = found.secret.map(Arc::new);
        let current = found.current.map(Arc::new);
        self.insert_rows(generation, Some(&vault), secret.as_ref(), current.as_ref());
        Ok(Some((vault, secret)))
    }

    /// Hands the miss to the batch reader and waits for the result. Returns None when the
    /// batch failed or the reader is gone.
    async fn read_in_batch(
        &self,
        store: &Arc<dyn Store>,
        vault_name: &str,
        secret_name: &str,
    ) -> Option<Option<SecretForRead>> {
        let misses = self.misses.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(MISS_QUEUE);
            tokio::spawn(read_batches(Arc::clone(store), receiver));
            sender
        });
        let (reply, result) = oneshot::channel();
        let miss = Miss {
            vault: vault_name.to_owned(),
            secret: secret_name.to_owned(),
            reply,
        };
        misses.send(miss).await.ok()?;
        result.await.ok().flatten()
    }

    /// Drops the cached row of secret `name` in vault `vault_id` and its versions. Call it
    /// after the store has written or deleted the secret.
    pub fn invalidate_secret(&self, vault_id: &str, name: &str, secret_id: &str) {
        if let Ok(mut entries) = self.entries.write() {
            entries
                .secrets
                .retain(|t| !(t.row.vault_id == vault_id && t.row.name == name));
            entries.versions.retain(|row| row.secret_id != secret_id);
            entries.generation += 1;
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
        cache.insert_rows(generation, None, Some(&secret(1)), None);
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
        cache.insert_rows(generation, None, Some(&secret(1)), Some(&version(1)));

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

        cache.insert_rows(stale_generation, None, Some(&secret(1)), None);
        assert!(cache.secret("vlt_1", "db").is_none());

        cache.insert_rows(cache.generation(), None, Some(&secret(2)), None);
        assert_eq!(cache.secret("vlt_1", "db").unwrap().current_version, 2);
    }

    #[tokio::test]
    async fn load_caches_vault_secret_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = latchkey_store::SqliteStore::open(&dir.path().join("cache.db"))
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(sqlite);
        let vault = VaultRow {
            id: "vlt_1".into(),
            name: "prod".into(),
            tags: Default::default(),
            wrapped_key: vec![9],
            created_at: 0,
        };
        store.create_vault(&vault).await.unwrap();
        store
            .put_secret_version(None, &secret(1), &version(1))
            .await
            .unwrap();
        let cache = SecretCache::default();

        assert!(cache.load(&store, "staging", "db").await.unwrap().is_none());
        let (found, missing) = cache.load(&store, "prod", "other").await.unwrap().unwrap();
        assert_eq!(*found, vault);
        assert!(missing.is_none());
        assert!(
            cache.secret("vlt_1", "other").is_none(),
            "no secret, no entry"
        );

        let (_, found) = cache.load(&store, "prod", "db").await.unwrap().unwrap();
        assert_eq!(found.unwrap().current_version, 1);
        assert_eq!(cache.vault("prod").unwrap().id, "vlt_1");
        assert_eq!(cache.secret("vlt_1", "db").unwrap().current_version, 1);
        assert_eq!(cache.version("sec_1", 1).unwrap().ciphertext, vec![1, 2, 3]);

        // A write between the query and the insert keeps the old rows out.
        cache.invalidate_secret("vlt_1", "db", "sec_1");
        let generation = cache.generation();
        cache.invalidate_secret("vlt_1", "db", "sec_1");
        cache.insert_rows(generation, None, Some(&secret(1)), Some(&version(1)));
        assert!(cache.secret("vlt_1", "db").is_none());
        assert!(cache.version("sec_1", 1).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_get_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = latchkey_store::SqliteStore::open(&dir.path().join("batch.db"))
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(sqlite);
        for v in 0..4 {
            let vault = VaultRow {
                id: format!("vlt_{v}"),
                name: format!("v{v}"),
                tags: Default::default(),
                wrapped_key: vec![9],
                created_at: 0,
            };
            store.create_vault(&vault).await.unwrap();
            for k in 0..25 {
                let secret_id = format!("sec_{v}_{k}");
                let secret = SecretRow {
                    id: secret_id.clone(),
                    vault_id: vault.id.clone(),
                    name: format!("k{k}"),
                    ..(*secret(1)).clone()
                };
                let version = SecretVersionRow {
                    secret_id,
                    ciphertext: vec![v, k],
                    ..(*version(1)).clone()
                };
                store
                    .put_secret_version(None, &secret, &version)
                    .await
                    .unwrap();
            }
        }
        let cache = Arc::new(SecretCache::default());
        let mut reads = tokio::task::JoinSet::new();
        for round in 0..3u8 {
            for v in 0..5u8 {
                for k in 0..26u8 {
                    let (cache, store) = (Arc::clone(&cache), Arc::clone(&store));
                    reads.spawn(async move {
                        let (vault, secret) = (format!("v{v}"), format!("k{k}"));
                        let found = cache.load(&store, &vault, &secret).await.unwrap();
                        (round, v, k, found)
                    });
                }
            }
        }
        while let Some(read) = reads.join_next().await {
            let (_, v, k, found) = read.unwrap();
            match found {
                None => assert_eq!(v, 4, "only vault v4 is missing"),
                Some((vault, secret)) => {
                    assert_eq!(vault.name, format!("v{v}"));
                    match secret {
                        None => assert_eq!(k, 25, "only secret k25 is missing"),
                        Some(secret) => {
                            assert_eq!(secret.id, format!("sec_{v}_{k}"));
                            let version = cache.version(&secret.id, 1).unwrap();
                            assert_eq!(version.ciphertext, vec![v, k]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn maps_keep_two_generations() {
        let cache = SecretCache::default();
        let generation = cache.generation();
        let numbered = |n: u32| {
            Arc::new(SecretVersionRow {
                version: n,
                ..(*version(0)).clone()
            })
        };
        for n in 0..2 * GENERATION_ENTRIES as u32 + 1 {
            cache.insert_version(numbered(n), generation);
        }
        let entries = cache.entries.read().unwrap();
        assert_eq!(entries.versions.current.len(), 1);
        assert_eq!(entries.versions.previous.len(), GENERATION_ENTRIES);
        drop(entries);
        // The newest entries are found; the oldest generation is gone.
        let last = 2 * GENERATION_ENTRIES as u32;
        assert!(cache.version("sec_1", last).is_some());
        assert!(cache.version("sec_1", last - 1).is_some());
        assert!(cache.version("sec_1", GENERATION_ENTRIES as u32).is_some());
        assert!(
            cache
                .version("sec_1", GENERATION_ENTRIES as u32 - 1)
                .is_none()
        );
        assert!(cache.version("sec_1", 0).is_none());
    }
}

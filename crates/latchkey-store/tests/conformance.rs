//! The store conformance suite: behaviour every `Store` implementation must share.
//! Each check takes `&dyn Store`, so every backend runs the same functions.
//!
//! The PostgreSQL cases need a server: `LATCHKEY_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`, names a database through which each case
//! creates, and afterwards drops, a database of its own. They fail, not skip, when the server
//! cannot be reached.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use latchkey_core::audit::{
    AuditEvent, AuditRecord, AuditSigner, AuditVerifier, ChainVerifier, GENESIS_HASH, Outcome,
    seal_event,
};
use latchkey_store::{
    AuditFilter, PrincipalRow, SecretRow, SecretVersionRow, SqliteStore, Store, StoreError,
    TokenRow, VaultRow,
};

async fn sqlite() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("test.db"))
        .await
        .unwrap();
    (dir, store)
}

fn principal(id: &str, name: &str, groups: &[&str]) -> PrincipalRow {
    PrincipalRow {
        id: id.into(),
        kind: "user".into(),
        name: name.into(),
        active: true,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        created_at: 1,
    }
}

fn token(accessor: &str, principal_id: &str, hash_byte: u8) -> TokenRow {
    TokenRow {
        accessor: accessor.into(),
        hash: [hash_byte; 32],
        principal_id: principal_id.into(),
        kind: "user".into(),
        created_at: 10,
        ttl: 60,
        expires_at: 70,
        max_expires_at: 100,
        revoked_at: None,
        created_by: None,
    }
}

fn vault(id: &str, name: &str) -> VaultRow {
    VaultRow {
        id: id.into(),
        name: name.into(),
        tags: BTreeMap::from([("env".into(), "prod".into())]),
        wrapped_key: vec![1, 2, 3],
        created_at: 5,
    }
}

fn version(secret_id: &str, number: u32) -> SecretVersionRow {
    SecretVersionRow {
        secret_id: secret_id.into(),
        version: number,
        field_names: vec!["password".into()],
        ciphertext: vec![number as u8; 8],
        created_at: 7,
        created_by: "User::\"root\"".into(),
    }
}

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        time: format!("2026-12-04T10:00:{:02}.000000Z", n % 60),
        request_id: format!("req-{n}"),
        principal: "User::\"alice\"".into(),
        action: "read".into(),
        resource: "Secret::\"prod/db\"".into(),
        outcome: Outcome::Allowed,
        reason: None,
        policies: vec!["p".into()],
        client_addr: Some("127.0.0.1".into()),
        token_id: Some("tok_x".into()),
        detail: BTreeMap::from([("field".into(), "password".into())]),
    }
}

async fn initialize_is_once(store: &dyn Store) {
    let root = principal("prn_root", "root", &[]);
    store
        .initialize(
            "{\"mode\":\"key_file\"}",
            &root,
            &token("tok_root", "prn_root", 9),
        )
        .await
        .unwrap();
    let again = store
        .initialize("{}", &root, &token("tok_other", "prn_root", 8))
        .await;
    assert!(matches!(again, Err(StoreError::AlreadyInitialized)));
    assert_eq!(
        store.seal_config().await.unwrap().as_deref(),
        Some("{\"mode\":\"key_file\"}")
    );
    assert!(
        store
            .token_by_accessor("tok_other")
            .await
            .unwrap()
            .is_none(),
        "the failed init wrote nothing"
    );
}

async fn vaults_are_unique(store: &dyn Store) {
    store.create_vault(&vault("v1", "prod")).await.unwrap();
    let duplicate = store.create_vault(&vault("v2", "prod")).await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))));
    let found = store.vault_by_name("prod").await.unwrap().unwrap();
    assert_eq!(found, vault("v1", "prod"));
    assert_eq!(store.vault_by_id("v1").await.unwrap().unwrap().name, "prod");
    assert_eq!(store.list_vaults().await.unwrap().len(), 1);
}

async fn secret_versions_use_optimistic_concurrency(store: &dyn Store) {
    store.create_vault(&vault("v1", "prod")).await.unwrap();
    let first = SecretRow {
        id: "s1".into(),
        vault_id: "v1".into(),
        name: "db".into(),
        tags: BTreeMap::new(),
        current_version: 1,
        created_at: 1,
        updated_at: 1,
    };
    store
        .put_secret_version(None, &first, &version("s1", 1))
        .await
        .unwrap();
    let again = store
        .put_secret_version(None, &first, &version("s1", 1))
        .await;
    assert!(
        matches!(again, Err(StoreError::Concurrent(_))),
        "a second create of the same name loses"
    );

    let second = SecretRow {
        current_version: 2,
        updated_at: 2,
        ..first.clone()
    };
    store
        .put_secret_version(Some(&first), &second, &version("s1", 2))
        .await
        .unwrap();
    let stale = store
        .put_secret_version(Some(&first), &second, &version("s1", 2))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Concurrent(_))),
        "a writer that read version 1 loses"
    );

    assert_eq!(
        store
            .secret_by_name("v1", "db")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        2
    );
    assert_eq!(
        store
            .secret_version("s1", 1)
            .await
            .unwrap()
            .unwrap()
            .ciphertext,
        vec![1; 8]
    );
    let versions = store.secret_versions("s1").await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert!(store.delete_secret("s1").await.unwrap());
    assert!(store.secret_version("s1", 1).await.unwrap().is_none());
    assert!(!store.delete_secret("s1").await.unwrap());
}

async fn principals_and_groups(store: &dyn Store) {
    store
        .create_principal(&principal("p1", "alice", &["devs", "ops"]))
        .await
        .unwrap();
    let duplicate = store.create_principal(&principal("p2", "alice", &[])).await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))));
    assert_eq!(
        store
            .principal_by_name("user", "alice")
            .await
            .unwrap()
            .unwrap()
            .groups,
        vec!["devs", "ops"]
    );
    store
        .set_groups("p1", &["admins".to_string()])
        .await
        .unwrap();
    assert_eq!(
        store.principal_by_id("p1").await.unwrap().unwrap().groups,
        vec!["admins"]
    );
}

async fn tokens_revoke_and_renew(store: &dyn Store) {
    store
        .create_principal(&principal("p1", "alice", &[]))
        .await
        .unwrap();
    store.insert_token(&token("tok_a", "p1", 1)).await.unwrap();
    assert_eq!(
        store
            .token_by_hash(&[1; 32])
            .await
            .unwrap()
            .unwrap()
            .accessor,
        "tok_a"
    );
    assert!(store.set_token_expiry("tok_a", 90).await.unwrap());
    assert_eq!(
        store
            .token_by_accessor("tok_a")
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        90
    );
    assert!(store.revoke_token("tok_a", 50).await.unwrap());
    assert!(
        !store.revoke_token("tok_a", 51).await.unwrap(),
        "revoking twice is a no-op"
    );
    assert!(
        !store.set_token_expiry("tok_a", 95).await.unwrap(),
        "a revoked token cannot be renewed"
    );
    assert_eq!(
        store
            .token_by_accessor("tok_a")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(50)
    );
    assert_eq!(store.list_tokens(Some("p1")).await.unwrap().len(), 1);
}

async fn policies_replace_by_name(store: &dyn Store) {
    assert!(
        store
            .put_policy("p", "permit(principal, action, resource);", 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_policy("p", "forbid(principal, action, resource);", 2)
            .await
            .unwrap()
    );
    let row = store.policy("p").await.unwrap().unwrap();
    assert_eq!((row.created_at, row.updated_at), (1, 2));
    assert!(row.text.starts_with("forbid"));
    assert!(store.delete_policy("p").await.unwrap());
    assert!(store.list_policies().await.unwrap().is_empty());
}

async fn audit_appends_in_order_and_refuses_duplicates(store: &dyn Store) {
    assert_eq!(store.audit_head().await.unwrap(), None);
    let mut prev = GENESIS_HASH;
    let mut events = Vec::new();
    for seq in 1..=1200 {
        let event = seal_event(seq, &prev, record(seq));
        prev = hex_to_array(&event.hash);
        events.push(event);
    }
    store.append_audit(&events[..700]).await.unwrap();
    store.append_audit(&events[700..]).await.unwrap();
    let head = store.audit_head().await.unwrap().unwrap();
    assert_eq!(head, (1200, events[1199].hash.clone()));
    let page = store.audit_events(1000, 50).await.unwrap();
    assert_eq!(page.first().unwrap().seq, 1001);
    assert_eq!(page.len(), 50);
    assert_eq!(page[0], events[1000], "events read back exactly as written");

    let duplicate = store.append_audit(&events[1199..]).await;
    assert!(
        matches!(duplicate, Err(StoreError::Concurrent(_))),
        "a sequence number is never written twice: {duplicate:?}"
    );
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 1200);
}

/// Seals `count` events that continue a chain whose last event is `head`.
fn continue_chain(head: Option<&(u64, String)>, count: u64, tag: &str) -> Vec<AuditEvent> {
    let (mut seq, mut prev) = match head {
        Some((seq, hash)) => (*seq, hex_to_array(hash)),
        None => (0, GENESIS_HASH),
    };
    (0..count)
        .map(|i| {
            seq += 1;
            let mut rec = record(seq);
            rec.request_id = format!("{tag}-{i}");
            let event = seal_event(seq, &prev, rec);
            prev = hex_to_array(&event.hash);
            event
        })
        .collect()
}

async fn checkpoints_are_stored_in_order_once(store: &dyn Store) {
    assert_eq!(store.last_checkpoint().await.unwrap(), None);
    let (signer, _) = AuditSigner::generate().unwrap();
    let events = continue_chain(None, 30, "cp");
    store.append_audit(&events).await.unwrap();
    let at = |seq: u64| {
        let head = hex_to_array(&events[usize::try_from(seq).unwrap() - 1].hash);
        signer.sign(seq, &head, chrono::DateTime::UNIX_EPOCH)
    };
    for seq in [10, 20, 30] {
        store.append_checkpoint(&at(seq)).await.unwrap();
    }
    let again = store.append_checkpoint(&at(20)).await;
    assert!(
        matches!(&again, Err(StoreError::Conflict(what)) if what.contains("20")),
        "one checkpoint per sequence: {again:?}"
    );
    let all = store.checkpoints(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), [10, 20, 30]);
    assert_eq!(all[1], at(20), "read back exactly as written");
    let page = store.checkpoints(10, 1).await.unwrap();
    assert_eq!(page.iter().map(|c| c.seq).collect::<Vec<_>>(), [20]);
    assert_eq!(store.last_checkpoint().await.unwrap().unwrap().seq, 30);

    let mut verifier = AuditVerifier::new(signer.public_key(), ChainVerifier::new(), all).unwrap();
    for event in store.audit_events(0, 100).await.unwrap() {
        verifier.push(&event).unwrap();
    }
    assert_eq!(verifier.finish().unwrap().checkpoints, 3);
}

async fn audit_signing_key_is_created_once(store: &dyn Store) {
    assert_eq!(store.audit_signing_key().await.unwrap(), None);
    assert!(store.insert_audit_signing_key(&[1, 2, 0xfe]).await.unwrap());
    assert!(!store.insert_audit_signing_key(&[9, 9]).await.unwrap());
    assert_eq!(
        store.audit_signing_key().await.unwrap(),
        Some(vec![1, 2, 0xfe])
    );
}

async fn audit_search_filters_in_sql(store: &dyn Store) {
    let mut prev = GENESIS_HASH;
    let mut events = Vec::new();
    for seq in 1..=40u64 {
        let mut rec = record(seq);
        rec.time = format!("2026-12-04T10:00:{:02}.000000Z", seq);
        rec.principal = if seq % 2 == 0 {
            "User::\"alice\""
        } else {
            "User::\"bob\""
        }
        .into();
        rec.action = if seq % 5 == 0 { "write" } else { "read" }.into();
        rec.resource = if seq % 3 == 0 {
            "Secret::\"prod/db\"".into()
        } else {
            "Secret::\"dev/db\"".into()
        };
        rec.outcome = if seq % 4 == 0 {
            Outcome::Denied
        } else {
            Outcome::Allowed
        };
        let event = seal_event(seq, &prev, rec);
        prev = hex_to_array(&event.hash);
        events.push(event);
    }
    store.append_audit(&events).await.unwrap();
    let seqs = |found: Vec<AuditEvent>| found.iter().map(|e| e.seq).collect::<Vec<_>>();
    let base = AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    };
    assert_eq!(seqs(store.search_audit(&base).await.unwrap()).len(), 40);
    let alice_denied = AuditFilter {
        principal: Some("User::\"alice\"".into()),
        outcome: Some(Outcome::Denied),
        ..base.clone()
    };
    assert_eq!(
        seqs(store.search_audit(&alice_denied).await.unwrap()),
        [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    );
    let prod_writes = AuditFilter {
        resource_prefix: Some("Secret::\"prod/".into()),
        action: Some("write".into()),
        ..base.clone()
    };
    assert_eq!(
        seqs(store.search_audit(&prod_writes).await.unwrap()),
        [15, 30]
    );
    // A prefix with LIKE wildcards matches only literally.
    let wildcard = AuditFilter {
        resource_prefix: Some("Secret::\"%".into()),
        ..base.clone()
    };
    assert!(store.search_audit(&wildcard).await.unwrap().is_empty());
    let window = AuditFilter {
        since: Some("2026-12-04T10:00:10.000000Z".into()),
        until: Some("2026-12-04T10:00:13.000000Z".into()),
        ..base.clone()
    };
    assert_eq!(
        seqs(store.search_audit(&window).await.unwrap()),
        [10, 11, 12]
    );
    let paged = AuditFilter {
        after: 30,
        limit: 2,
        principal: Some("User::\"bob\"".into()),
        ..base.clone()
    };
    assert_eq!(seqs(store.search_audit(&paged).await.unwrap()), [31, 33]);
}

fn assert_head_moved(result: Result<(), StoreError>, why: &str) {
    match result {
        Err(StoreError::Concurrent(what)) => assert_eq!(what, "audit chain head", "{why}"),
        other => panic!("{why}: expected Concurrent(\"audit chain head\"), got {other:?}"),
    }
}

async fn append_audit_rejects_a_batch_that_does_not_continue_the_head(store: &dyn Store) {
    let skipping_one = continue_chain(Some(&(1, hex(&GENESIS_HASH))), 2, "early");
    assert_head_moved(
        store.append_audit(&skipping_one).await,
        "an empty log starts at sequence 1",
    );
    let off_genesis = continue_chain(Some(&(0, hex(&[7; 32]))), 2, "off");
    assert_head_moved(
        store.append_audit(&off_genesis).await,
        "an empty log starts from the genesis hash",
    );
    assert_eq!(
        store.audit_head().await.unwrap(),
        None,
        "nothing was written"
    );

    let first = continue_chain(None, 3, "first");
    store.append_audit(&first).await.unwrap();
    let head = store.audit_head().await.unwrap().unwrap();
    assert_eq!(head, (3, first[2].hash.clone()));

    let gap = continue_chain(Some(&(4, head.1.clone())), 2, "gap");
    assert_head_moved(
        store.append_audit(&gap).await,
        "a batch may not skip a number",
    );
    let fork = continue_chain(Some(&(3, hex(&[9; 32]))), 2, "fork");
    assert_head_moved(
        store.append_audit(&fork).await,
        "a batch must link to the stored head's hash",
    );
    let stale = continue_chain(Some(&(2, first[1].hash.clone())), 3, "stale");
    assert_head_moved(
        store.append_audit(&stale).await,
        "a writer that read an older head loses, also for events past the head",
    );
    assert_eq!(
        store.audit_events(0, 100).await.unwrap(),
        first,
        "rejected batches wrote nothing"
    );

    let upper = (3, head.1.to_ascii_uppercase());
    let mut next = continue_chain(Some(&upper), 2, "next");
    next[0].prev_hash = upper.1.clone();
    store.append_audit(&next).await.unwrap();
    assert_eq!(
        store.audit_head().await.unwrap(),
        Some((5, next[1].hash.clone())),
        "the head hash compares without regard to hex case"
    );
}

/// Names sort by their bytes, as SQLite's default collation does, whatever the database's.
async fn lists_sort_names_by_bytes(store: &dyn Store) {
    let names = ["b", "B", "a", "_x", "\u{e9}", "Z", "a b", "ab"];
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();

    for (i, name) in names.iter().enumerate() {
        store
            .create_vault(&vault(&format!("v{i}"), name))
            .await
            .unwrap();
        store
            .put_policy(name, "permit(principal, action, resource);", 1)
            .await
            .unwrap();
        store
            .create_principal(&principal(&format!("p{i}"), name, &[]))
            .await
            .unwrap();
    }
    let vaults: Vec<String> = store
        .list_vaults()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(vaults, expected);
    let policies: Vec<String> = store
        .list_policies()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(policies, expected);
    let principals: Vec<String> = store
        .list_principals()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(principals, expected);

    let groups: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    store.set_groups("p0", &groups).await.unwrap();
    assert_eq!(
        store.principal_by_id("p0").await.unwrap().unwrap().groups,
        expected
    );
}

/// Writers on two stores over one database append concurrently. Each reads the head, seals a
/// batch after it, and retries when another writer moved the head first. No other error may
/// occur, and the log ends as one unbroken chain that contains every event once.
async fn concurrent_writers_never_fork_the_chain(a: &dyn Store, b: &dyn Store) {
    const WRITERS_PER_STORE: usize = 2;
    const BATCHES: usize = 15;

    async fn writer(store: &dyn Store, tag: String) -> usize {
        let mut lost = 0;
        for batch in 0..BATCHES {
            loop {
                let head = store.audit_head().await.unwrap();
                let count = (batch % 3 + 1) as u64;
                let events = continue_chain(head.as_ref(), count, &format!("{tag}-{batch}"));
                match store.append_audit(&events).await {
                    Ok(()) => break,
                    Err(StoreError::Concurrent(what)) if what == "audit chain head" => {
                        lost += 1;
                        assert!(lost < 10_000, "writer {tag} never got its batch in");
                    }
                    Err(other) => panic!("writer {tag}: unexpected error {other:?}"),
                }
            }
        }
        lost
    }

    let mut writers = Vec::new();
    for i in 0..WRITERS_PER_STORE {
        writers.push(writer(a, format!("a{i}")));
        writers.push(writer(b, format!("b{i}")));
    }
    let lost: usize = futures_join_all(writers).await.into_iter().sum();

    let per_writer: u64 = (0..BATCHES).map(|batch| (batch % 3 + 1) as u64).sum();
    let total = per_writer * (2 * WRITERS_PER_STORE) as u64;
    let events = a.audit_events(0, 10_000).await.unwrap();
    assert_eq!(events.len() as u64, total, "every event was written once");
    let mut verifier = ChainVerifier::new();
    for event in &events {
        verifier.push(event).unwrap();
    }
    assert_eq!(verifier.finish().last_seq, total);
    assert_eq!(b.audit_head().await.unwrap().unwrap().0, total);
    eprintln!(
        "{} writers lost the race {lost} times",
        2 * WRITERS_PER_STORE
    );
}

/// Many policy writes at once, each reading before it writes, all succeed. On SQLite a
/// deferred transaction failed here with "database is locked" when another connection
/// committed between its read and its write.
async fn concurrent_policy_writes_all_succeed(store: &dyn Store) {
    const WRITES: usize = 48;
    let writes = (0..WRITES)
        .map(|i| {
            let text = format!(
                "permit(principal in Group::\"team-{i}\", action == Action::\"read\", resource);"
            );
            async move { store.put_policy(&format!("team-{i}"), &text, 1).await }
        })
        .collect();
    for (i, result) in futures_join_all(writes).await.into_iter().enumerate() {
        assert!(
            matches!(result, Ok(true)),
            "policy write {i} failed: {result:?}"
        );
    }
    assert_eq!(store.list_policies().await.unwrap().len(), WRITES);
}

/// Polls all futures on the current task until every one is done, returning their outputs
/// in order. Enough for the contention above: the waiting happens in the database.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_to_array(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

macro_rules! sqlite_case {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            let (_dir, store) = sqlite().await;
            super::$name(&store).await;
        }
    };
}

mod sqlite_backend {
    use super::*;
    sqlite_case!(initialize_is_once);
    sqlite_case!(vaults_are_unique);
    sqlite_case!(secret_versions_use_optimistic_concurrency);
    sqlite_case!(principals_and_groups);
    sqlite_case!(tokens_revoke_and_renew);
    sqlite_case!(policies_replace_by_name);
    sqlite_case!(audit_appends_in_order_and_refuses_duplicates);
    sqlite_case!(append_audit_rejects_a_batch_that_does_not_continue_the_head);
    sqlite_case!(lists_sort_names_by_bytes);
    sqlite_case!(checkpoints_are_stored_in_order_once);
    sqlite_case!(audit_signing_key_is_created_once);
    sqlite_case!(audit_search_filters_in_sql);
    sqlite_case!(concurrent_policy_writes_all_succeed);

    #[tokio::test]
    async fn concurrent_writers_never_fork_the_chain() {
        let (dir, a) = sqlite().await;
        let b = SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap();
        super::concurrent_writers_never_fork_the_chain(&a, &b).await;
    }
}

/// A database of one PostgreSQL test case, created from `LATCHKEY_TEST_POSTGRES_URL`.
struct PgTestDatabase {
    admin: sqlx::PgConnection,
    name: String,
    /// URL of the created database: the admin URL with a `dbname` parameter added.
    url: String,
}

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TEST_DATABASE_PREFIX: &str = "latchkey_test_";
/// Databases of earlier runs older than this are dropped when a case starts: a run that was
/// killed never dropped its own.
const STALE_AFTER_SECS: u64 = 3600;

impl PgTestDatabase {
    async fn create() -> PgTestDatabase {
        use sqlx::Connection;

        let admin_url = std::env::var("LATCHKEY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "failed to connect to PostgreSQL at `{}`: {e}; the PostgreSQL conformance tests need \
                     it. Start the local server with `pg_ctlcluster --skip-systemctl-redirect \
                     $(ls /etc/postgresql) main start`, or set LATCHKEY_TEST_POSTGRES_URL to a \
                     database on a server where this user may create databases",
                    latchkey_store::redact_url(&admin_url)
                )
            });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        drop_stale_databases(&mut admin, now).await;

        let name = format!(
            "{TEST_DATABASE_PREFIX}{now}_{}",
            uuid::Uuid::new_v4().simple()
        );
        // The ICU collation sorts differently from byte order, so the sort check tests the
        // schema's own collation. A server built without ICU gets a plain database.
        let icu = format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        );
        if sqlx::query(&icu).execute(&mut admin).await.is_err() {
            sqlx::query(&format!("CREATE DATABASE \"{name}\" TEMPLATE template0"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "failed to create database `{name}` through `{}`: {e}; the user needs \
                         the CREATEDB privilege",
                        latchkey_store::redact_url(&admin_url)
                    )
                });
        }
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}dbname={name}");
        PgTestDatabase { admin, name, url }
    }

    /// Drops the database, closing any connection still open to it.
    async fn drop_database(mut self) {
        let result = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await;
        if let Err(e) = result {
            eprintln!("failed to drop test database `{}`: {e}", self.name);
        }
    }
}

/// Drops test databases whose name says they were created more than an hour ago.
async fn drop_stale_databases(admin: &mut sqlx::PgConnection, now: u64) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(TEST_DATABASE_PREFIX)
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for name in names {
        let created = name
            .strip_prefix(TEST_DATABASE_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| now.saturating_sub(created) > STALE_AFTER_SECS) {
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(e) = sqlx::query(&drop).execute(&mut *admin).await {
                eprintln!("failed to drop stale test database `{name}`: {e}");
            }
        }
    }
}

async fn open_postgres(url: &str) -> latchkey_store::PostgresStore {
    latchkey_store::PostgresStore::open(url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "failed to open the store at `{}`: {e}",
                latchkey_store::redact_url(url)
            )
        })
}

/// Runs `case` against a fresh database, then drops the database whether or not `case`
/// panicked, and passes the panic on.
async fn with_postgres<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let database = PgTestDatabase::create().await;
    let outcome = tokio::spawn(case(database.url.clone())).await;
    database.drop_database().await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("the test task did not finish: {e}");
    }
}

macro_rules! postgres_case {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            with_postgres(|url| async move {
                let store = open_postgres(&url).await;
                super::$name(&store).await;
                store.pool().close().await;
            })
            .await;
        }
    };
}

mod postgres_backend {
    use super::*;
    postgres_case!(initialize_is_once);
    postgres_case!(vaults_are_unique);
    postgres_case!(secret_versions_use_optimistic_concurrency);
    postgres_case!(principals_and_groups);
    postgres_case!(tokens_revoke_and_renew);
    postgres_case!(policies_replace_by_name);
    postgres_case!(audit_appends_in_order_and_refuses_duplicates);
    postgres_case!(append_audit_rejects_a_batch_that_does_not_continue_the_head);
    postgres_case!(lists_sort_names_by_bytes);
    postgres_case!(checkpoints_are_stored_in_order_once);
    postgres_case!(audit_signing_key_is_created_once);
    postgres_case!(audit_search_filters_in_sql);
    postgres_case!(concurrent_policy_writes_all_succeed);

    #[tokio::test]
    async fn concurrent_writers_never_fork_the_chain() {
        with_postgres(|url| async move {
            let a = open_postgres(&url).await;
            let b = open_postgres(&url).await;
            super::concurrent_writers_never_fork_the_chain(&a, &b).await;
            a.pool().close().await;
            b.pool().close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn with_postgres_drops_database_after_panic() {
        let name = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let seen = name.clone();
        let failing = tokio::spawn(with_postgres(move |url| async move {
            *seen.lock().unwrap() = url.rsplit("dbname=").next().unwrap().to_string();
            panic!("this case fails on purpose");
        }))
        .await;
        assert!(failing.unwrap_err().is_panic(), "the panic was passed on");

        let name = name.lock().unwrap().clone();
        assert!(name.starts_with(TEST_DATABASE_PREFIX), "{name}");
        let admin_url = std::env::var("LATCHKEY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0, "database `{name}` was dropped");
    }
}

//! The store conformance suite: behaviour every `Store` implementation must share.
//! Each check takes `&dyn Store`, so another backend runs the same functions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use latchkey_core::audit::{AuditRecord, GENESIS_HASH, Outcome, seal_event};
use latchkey_store::{
    PrincipalRow, SecretRow, SecretVersionRow, SqliteStore, Store, StoreError, TokenRow, VaultRow,
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
        duplicate.is_err(),
        "a sequence number is never written twice"
    );
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 1200);
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
}

//! The store conformance suite: behaviour every `Store` implementation must share.
//! Each check takes `&dyn Store`, so every backend runs the same functions.
//!
//! The PostgreSQL cases need a server: `LATCHKEY_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`, names a database through which each case
//! creates, and afterwards drops, a database of its own. They fail, not skip, when the server
//! cannot be reached.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use latchkey_core::audit::{
    AuditEvent, AuditRecord, AuditSigner, AuditVerifier, ChainVerifier, GENESIS_HASH, Outcome,
    seal_event,
};
use latchkey_store::{
    AccessRequestFilter, AccessRequestRow, AccessResource, AccessReviewRow, AuditFilter,
    ConnectorRow, GrantFilter, GrantRow, LoginAttemptRow, PrincipalRow, ReviewOutcome,
    ScimGroupRow, ScimLink, ScimTokenRow, ScimUserRow, SecretRow, SecretVersionRow, SqliteStore,
    Store, StoreError, TokenRow, VaultRow, transfer,
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

    // A batch larger than one INSERT statement takes is still all or nothing.
    let head = store.audit_head().await.unwrap();
    let large = continue_chain(head.as_ref(), 4500, "large");
    let mut stale = large.clone();
    stale[0].prev_hash = "00".repeat(32);
    assert!(matches!(
        store.append_audit(&stale).await,
        Err(StoreError::Concurrent(_))
    ));
    assert_eq!(store.audit_head().await.unwrap(), head);
    store.append_audit(&large).await.unwrap();
    assert_eq!(
        store.audit_events(1200, 5000).await.unwrap(),
        large,
        "every event of the large batch, in order"
    );
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

async fn connectors_replace_by_kind_and_name(store: &dyn Store) {
    let row = |kind: &str, name: &str, config: &str, at: i64| ConnectorRow {
        kind: kind.into(),
        name: name.into(),
        config: config.into(),
        sealed_secret: (kind == "oidc").then(|| vec![1, 2, 3]),
        created_at: at,
        updated_at: at,
    };
    assert!(
        store
            .put_connector(&row("oidc", "corp", "{}", 10))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_connector(&row("jwt", "corp", "{}", 11))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_connector(&row("oidc", "corp", r#"{"a":1}"#, 20))
            .await
            .unwrap()
    );
    let listed = store.list_connectors().await.unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|c| {
            (
                c.kind.as_str(),
                c.name.as_str(),
                c.config.as_str(),
                c.created_at,
                c.updated_at,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("jwt", "corp", "{}", 11, 11),
            ("oidc", "corp", r#"{"a":1}"#, 10, 20)
        ]
    );
    assert_eq!(listed[1].sealed_secret.as_deref(), Some(&[1u8, 2, 3][..]));
    assert!(store.delete_connector("oidc", "corp").await.unwrap());
    assert!(!store.delete_connector("oidc", "corp").await.unwrap());
    assert_eq!(store.list_connectors().await.unwrap().len(), 1);
}

async fn login_attempts_complete_once_and_expire(store: &dyn Store) {
    let attempt = |id: &str, expires_at: i64| LoginAttemptRow {
        id_hash: id.into(),
        connector: "corp".into(),
        flow: "code".into(),
        sealed: vec![9; 40],
        redirect_uri: Some("http://127.0.0.1:8250/callback".into()),
        expires_at,
    };
    store
        .insert_login_attempt(&attempt("old", 100), 50)
        .await
        .unwrap();
    store
        .insert_login_attempt(&attempt("new", 900), 50)
        .await
        .unwrap();
    assert!(store.login_attempt("new").await.unwrap().is_some());
    // Inserting at a later time sweeps the attempts that expired by then.
    store
        .insert_login_attempt(&attempt("later", 990), 500)
        .await
        .unwrap();
    assert!(store.login_attempt("old").await.unwrap().is_none());
    let taken = store.take_login_attempt("new").await.unwrap().unwrap();
    assert_eq!(
        taken.redirect_uri.as_deref(),
        Some("http://127.0.0.1:8250/callback")
    );
    assert_eq!(taken.sealed, vec![9; 40]);
    assert!(store.take_login_attempt("new").await.unwrap().is_none());
    assert!(store.login_attempt("new").await.unwrap().is_none());
    assert!(matches!(
        store
            .insert_login_attempt(&attempt("later", 990), 500)
            .await,
        Err(StoreError::Database(_))
    ));
}

async fn tokens_commit_with_their_audit_event(store: &dyn Store) {
    store
        .create_principal(&principal("p1", "alice", &[]))
        .await
        .unwrap();
    let head = store.audit_head().await.unwrap();
    // A batch that does not continue the head stores neither its events nor its token.
    let stale = continue_chain(
        Some(&(head.as_ref().map_or(0, |h| h.0) + 5, "00".repeat(32))),
        1,
        "stale",
    );
    assert!(matches!(
        store
            .append_audit_with_tokens(&stale, &[token("tok_stale", "p1", 7)])
            .await,
        Err(StoreError::Concurrent(_))
    ));
    assert!(
        store
            .token_by_accessor("tok_stale")
            .await
            .unwrap()
            .is_none()
    );
    let events = continue_chain(head.as_ref(), 1, "issue");
    store
        .append_audit_with_tokens(&events, &[token("tok_new", "p1", 8)])
        .await
        .unwrap();
    assert!(store.token_by_accessor("tok_new").await.unwrap().is_some());
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, events[0].seq);

    // Several tokens in one batch keep every field.
    let head = store.audit_head().await.unwrap();
    let events = continue_chain(head.as_ref(), 3, "several");
    let issued = [
        token("tok_a", "p1", 9),
        TokenRow {
            revoked_at: Some(80),
            created_by: Some("jwt:ci".into()),
            ..token("tok_b", "p1", 10)
        },
    ];
    store
        .append_audit_with_tokens(&events, &issued)
        .await
        .unwrap();
    for row in &issued {
        assert_eq!(
            store
                .token_by_accessor(&row.accessor)
                .await
                .unwrap()
                .as_ref(),
            Some(row)
        );
    }
    assert_eq!(
        store.token_by_hash(&[10; 32]).await.unwrap().unwrap(),
        issued[1]
    );
    assert_eq!(
        store.audit_events(0, 100).await.unwrap().last(),
        events.last()
    );

    // A token that cannot be stored takes its batch's events with it.
    let head = store.audit_head().await.unwrap();
    let events = continue_chain(head.as_ref(), 2, "duplicate");
    assert!(matches!(
        store
            .append_audit_with_tokens(&events, &[token("tok_a", "p1", 11)])
            .await,
        Err(StoreError::Database(_))
    ));
    assert_eq!(store.audit_head().await.unwrap(), head);
    store.append_audit(&events).await.unwrap();
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, events[1].seq);
}

async fn secret_for_read_joins_vault_secret_and_current_version(store: &dyn Store) {
    assert!(store.secret_for_read("prod", "db").await.unwrap().is_none());
    store.create_vault(&vault("v1", "prod")).await.unwrap();
    let found = store.secret_for_read("prod", "db").await.unwrap().unwrap();
    assert_eq!(found.vault, vault("v1", "prod"));
    assert!(found.secret.is_none() && found.current.is_none());

    let first = SecretRow {
        id: "s1".into(),
        vault_id: "v1".into(),
        name: "db".into(),
        tags: BTreeMap::from([("team".into(), "payments".into())]),
        current_version: 1,
        created_at: 1,
        updated_at: 1,
    };
    store
        .put_secret_version(None, &first, &version("s1", 1))
        .await
        .unwrap();
    let second = SecretRow {
        current_version: 2,
        updated_at: 2,
        ..first.clone()
    };
    store
        .put_secret_version(Some(&first), &second, &version("s1", 2))
        .await
        .unwrap();
    let found = store.secret_for_read("prod", "db").await.unwrap().unwrap();
    assert_eq!(found.vault, vault("v1", "prod"));
    assert_eq!(found.secret, Some(second));
    assert!(
        found.current == Some(version("s1", 2)),
        "the current version"
    );

    // Another vault's secret of the same name is not this one.
    store.create_vault(&vault("v2", "staging")).await.unwrap();
    let other = store
        .secret_for_read("staging", "db")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.vault.id, "v2");
    assert!(other.secret.is_none());
}

async fn secrets_for_read_keeps_request_order(store: &dyn Store) {
    assert!(store.secrets_for_read(&[]).await.unwrap().is_empty());
    store.create_vault(&vault("v1", "prod")).await.unwrap();
    store.create_vault(&vault("v2", "staging")).await.unwrap();
    for (id, vault_id, name) in [("s1", "v1", "db"), ("s2", "v1", "api"), ("s3", "v2", "db")] {
        let row = SecretRow {
            id: id.into(),
            vault_id: vault_id.into(),
            name: name.into(),
            tags: BTreeMap::new(),
            current_version: 1,
            created_at: 1,
            updated_at: 1,
        };
        store
            .put_secret_version(None, &row, &version(id, 1))
            .await
            .unwrap();
    }

    // Names that quote or escape in JSON or SQL reach the store unchanged.
    let odd = "it's \"odd\" \\ ünïcode";
    let requested = [
        ("staging", "db"),
        ("prod", "api"),
        ("nowhere", "db"),
        ("prod", "missing"),
        ("prod", "api"),
        (odd, odd),
        ("prod", "db"),
    ];

    let found = store.secrets_for_read(&requested).await.unwrap();
    assert_eq!(found.len(), requested.len());
    let secret_id = |i: usize| {
        found[i]
            .as_ref()
            .and_then(|f| f.secret.as_ref())
            .map(|s| s.id.as_str())
    };
    assert_eq!(secret_id(0), Some("s3"));
    assert_eq!(secret_id(1), Some("s2"));
    assert!(found[2].is_none(), "no such vault");
    assert_eq!(found[3].as_ref().map(|f| f.vault.id.as_str()), Some("v1"));
    assert_eq!(secret_id(3), None, "no such secret in the vault");
    assert_eq!(
        secret_id(4),
        Some("s2"),
        "a pair asked twice is answered twice"
    );
    assert!(found[5].is_none());
    assert_eq!(secret_id(6), Some("s1"));
    assert!(found[6].as_ref().unwrap().current == Some(version("s1", 1)));

    // Each result is what the single read gives.
    for (i, (vault_name, secret_name)) in requested.iter().enumerate() {
        let alone = store
            .secret_for_read(vault_name, secret_name)
            .await
            .unwrap();
        assert!(alone == found[i], "pair {i}");
    }
}

async fn audit_search_by_request_and_grant(store: &dyn Store) {
    let head = store.audit_head().await.unwrap();
    let mut events = Vec::new();
    let (mut seq, mut prev) = match &head {
        Some((seq, hash)) => (*seq, hex_to_array(hash)),
        None => (0, GENESIS_HASH),
    };
    for (request, grant) in [
        ("req-a", None),
        ("req-b", Some("grt_1")),
        ("req-c", Some("grt_2")),
    ] {
        seq += 1;
        let mut rec = record(seq);
        rec.request_id = request.into();
        if let Some(grant) = grant {
            rec.detail.insert("grant".into(), grant.into());
        }
        let event = seal_event(seq, &prev, rec);
        prev = hex_to_array(&event.hash);
        events.push(event);
    }
    store.append_audit(&events).await.unwrap();
    let search = |request_id: Option<&str>, grant: Option<&str>| AuditFilter {
        limit: 100,
        request_id: request_id.map(str::to_string),
        grant: grant.map(str::to_string),
        ..AuditFilter::default()
    };
    let found = store
        .search_audit(&search(Some("req-b"), None))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record.request_id, "req-b");
    let found = store
        .search_audit(&search(None, Some("grt_2")))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record.request_id, "req-c");
    assert!(
        store
            .search_audit(&search(Some("req-a"), Some("grt_1")))
            .await
            .unwrap()
            .is_empty()
    );
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
async fn sink_lease_admits_one_node_at_a_time(store: &dyn Store) {
    assert_eq!(
        store
            .claim_sink("siem", "node-a", 100, 130, 7)
            .await
            .unwrap(),
        Some(7),
        "a new sink starts at the initial cursor"
    );
    assert_eq!(
        store
            .claim_sink("siem", "node-b", 120, 150, 0)
            .await
            .unwrap(),
        None,
        "another node waits while the lease is live"
    );
    assert!(
        store
            .advance_sink("siem", "node-a", 42, 125, 155)
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_sink("siem", "node-b", 99, 126, 156)
            .await
            .unwrap(),
        "a node without the lease cannot move the cursor"
    );
    assert!(
        store
            .advance_sink("siem", "node-a", 30, 127, 157)
            .await
            .unwrap(),
        "the owner may renew"
    );
    let cursors = store.sink_cursors().await.unwrap();
    assert_eq!(cursors.len(), 1);
    assert_eq!(cursors[0].seq, 42, "the cursor never moves backward");
    assert_eq!(cursors[0].owner, "node-a");
    assert_eq!(cursors[0].lease_until, 157);

    assert_eq!(
        store
            .claim_sink("siem", "node-b", 158, 188, 0)
            .await
            .unwrap(),
        Some(42),
        "an expired lease passes to another node with the stored cursor"
    );
    assert!(
        !store
            .advance_sink("siem", "node-a", 50, 159, 189)
            .await
            .unwrap()
    );
    assert_eq!(store.sink_cursors().await.unwrap()[0].owner, "node-b");
}

async fn exports_are_recorded_in_order(store: &dyn Store) {
    assert!(store.exports().await.unwrap().is_empty());
    let mut export = latchkey_store::ExportRow {
        id: 0,
        first_seq: 1,
        last_seq: 500,
        events: 500,
        sha256: "ab".repeat(32),
        file_name: "audit-2026-01.jsonl".into(),
        recorded_at: 1000,
        recorded_by: r#"User::"root""#.into(),
    };
    let first = store.record_export(&export).await.unwrap();
    export.first_seq = 501;
    export.last_seq = 900;
    let second = store.record_export(&export).await.unwrap();
    assert!(second > first);
    let stored = store.exports().await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].id, first);
    assert_eq!((stored[0].first_seq, stored[0].last_seq), (1, 500));
    assert_eq!((stored[1].first_seq, stored[1].last_seq), (501, 900));
    assert_eq!(stored[1].file_name, "audit-2026-01.jsonl");
}

async fn purge_keeps_the_head_and_later_events(store: &dyn Store) {
    assert_eq!(store.audit_first_seq().await.unwrap(), None);
    let events = continue_chain(None, 20, "purge");
    store.append_audit(&events).await.unwrap();
    assert_eq!(store.audit_first_seq().await.unwrap(), Some(1));

    assert_eq!(store.purge_audit_before(11).await.unwrap(), 10);
    assert_eq!(store.audit_first_seq().await.unwrap(), Some(11));
    assert_eq!(store.audit_events(0, 100).await.unwrap()[0], events[10]);

    assert_eq!(
        store.purge_audit_before(1000).await.unwrap(),
        9,
        "the newest event survives any bound"
    );
    assert_eq!(store.audit_first_seq().await.unwrap(), Some(20));
    let head = store.audit_head().await.unwrap().unwrap();
    assert_eq!(head, (20, events[19].hash.clone()));
    let more = continue_chain(Some(&head), 1, "after");
    store.append_audit(&more).await.unwrap();
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 21);
}

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

async fn leases_have_one_holder(store: &dyn Store) {
    let minute = Duration::from_secs(60);
    assert!(store.take_lease("expiry", "node-a", minute).await.unwrap());
    assert!(
        !store.take_lease("expiry", "node-b", minute).await.unwrap(),
        "a running lease is not taken"
    );
    assert!(!store.renew_lease("expiry", "node-b", minute).await.unwrap());
    assert!(!store.release_lease("expiry", "node-b").await.unwrap());
    assert!(
        store.take_lease("expiry", "node-a", minute).await.unwrap(),
        "the holder may take its own lease again"
    );
    assert!(store.renew_lease("expiry", "node-a", minute).await.unwrap());
    assert!(
        store
            .take_lease("other-job", "node-b", minute)
            .await
            .unwrap(),
        "leases of other jobs are independent"
    );

    assert!(store.release_lease("expiry", "node-a").await.unwrap());
    assert!(!store.release_lease("expiry", "node-a").await.unwrap());
    assert!(
        store.take_lease("expiry", "node-b", minute).await.unwrap(),
        "a released lease is free at once"
    );
    assert!(!store.renew_lease("expiry", "node-a", minute).await.unwrap());

    // A lease of zero length has expired when it is written, as a killed holder's lease
    // has once its time is up.
    assert!(
        store
            .take_lease("killed", "node-a", Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(
        store.take_lease("killed", "node-b", minute).await.unwrap(),
        "an expired lease is taken over"
    );
    assert!(
        !store.renew_lease("killed", "node-a", minute).await.unwrap(),
        "the old holder cannot renew a lease taken over"
    );
    assert!(!store.take_lease("killed", "node-a", minute).await.unwrap());
}

async fn expired_tokens_are_claimed_once(store: &dyn Store) {
    store
        .create_principal(&principal("p1", "alice", &[]))
        .await
        .unwrap();
    for (accessor, hash, expires_at) in [
        ("tok_b", 2, 80),
        ("tok_a", 1, 70),
        ("tok_later", 3, 200),
        ("tok_revoked", 4, 60),
    ] {
        let mut row = token(accessor, "p1", hash);
        row.expires_at = expires_at;
        store.insert_token(&row).await.unwrap();
    }
    store.revoke_token("tok_revoked", 50).await.unwrap();

    let claims = store.claim_expired_tokens(100, 40, 10).await.unwrap();
    let claimed: Vec<_> = claims
        .iter()
        .map(|c| (c.accessor.as_str(), c.expires_at, c.reclaimed))
        .collect();
    assert_eq!(
        claimed,
        [("tok_a", 70, false), ("tok_b", 80, false)],
        "expired, unrevoked tokens, oldest expiry first"
    );
    assert_eq!(claims[0].principal_id, "p1");
    assert!(
        store
            .claim_expired_tokens(101, 41, 10)
            .await
            .unwrap()
            .is_empty(),
        "a fresh claim is not handed out twice"
    );

    assert!(store.mark_expiry_recorded("tok_a", 102).await.unwrap());
    assert!(!store.mark_expiry_recorded("tok_a", 103).await.unwrap());

    // tok_b's claim from 100 is stale by 150 and was never marked, so it comes back.
    let claims = store.claim_expired_tokens(200, 150, 1).await.unwrap();
    assert_eq!(claims.len(), 1, "the limit holds");
    assert_eq!(claims[0].accessor, "tok_b");
    assert!(claims[0].reclaimed);
    let claims = store.claim_expired_tokens(200, 150, 10).await.unwrap();
    let claimed: Vec<_> = claims
        .iter()
        .map(|c| (c.accessor.as_str(), c.reclaimed))
        .collect();
    assert_eq!(claimed, [("tok_later", false)]);
}

/// Holders on two stores over one database race for leases and token claims. Exactly one
/// holder wins each lease, and every expired token is claimed by exactly one caller.
async fn concurrent_holders_never_share_work(a: &dyn Store, b: &dyn Store) {
    const ROUNDS: usize = 10;
    const HOLDERS_PER_STORE: usize = 4;
    const TOKENS: usize = 40;

    for round in 0..ROUNDS {
        let job = format!("job-{round}");
        let mut takers = Vec::new();
        for i in 0..HOLDERS_PER_STORE {
            for (store, side) in [(a, "a"), (b, "b")] {
                let job = job.clone();
                takers.push(async move {
                    store
                        .take_lease(&job, &format!("{side}{i}"), Duration::from_secs(60))
                        .await
                        .unwrap()
                });
            }
        }
        let winners = futures_join_all(takers)
            .await
            .into_iter()
            .filter(|won| *won)
            .count();
        assert_eq!(winners, 1, "round {round}: one holder took the lease");
    }

    a.create_principal(&principal("p1", "alice", &[]))
        .await
        .unwrap();
    for n in 0..TOKENS {
        let mut row = token(&format!("tok_{n:02}"), "p1", n as u8);
        row.expires_at = 10;
        a.insert_token(&row).await.unwrap();
    }
    async fn claimer(store: &dyn Store) -> Vec<String> {
        let mut mine = Vec::new();
        loop {
            let claims = store.claim_expired_tokens(100, 0, 3).await.unwrap();
            if claims.is_empty() {
                return mine;
            }
            mine.extend(claims.into_iter().map(|c| c.accessor));
        }
    }
    let mut claimed: Vec<String> = futures_join_all(vec![claimer(a), claimer(b), claimer(a)])
        .await
        .into_iter()
        .flatten()
        .collect();
    claimed.sort();
    let expected: Vec<String> = (0..TOKENS).map(|n| format!("tok_{n:02}")).collect();
    assert_eq!(claimed, expected, "every token was claimed once");
}

/// Fills a store as a deployment would: seal, principals and groups, a vault with a
/// secret of two versions, a policy, tokens and a lease. It adds 1,200 audit events, more
/// than one read batch of the copy, with signed checkpoints at 500 and 1,000.
async fn fill_deployment(store: &dyn Store) -> AuditSigner {
    let root = principal("prn_root", "root", &["admins"]);
    let mut root_token = token("tok_root", "prn_root", 9);
    root_token.kind = "root".into();
    store
        .initialize("{\"mode\":\"keyfile\"}", &root, &root_token)
        .await
        .unwrap();
    store
        .create_principal(&principal("p1", "alice", &["devs", "ops"]))
        .await
        .unwrap();
    let mut inactive = principal("p2", "bob", &[]);
    inactive.active = false;
    store.create_principal(&inactive).await.unwrap();
    store
        .set_groups("prn_root", &["admins".into()])
        .await
        .unwrap();
    store.create_vault(&vault("v1", "prod")).await.unwrap();
    let secret = SecretRow {
        id: "s1".into(),
        vault_id: "v1".into(),
        name: "db".into(),
        tags: BTreeMap::new(),
        current_version: 1,
        created_at: 7,
        updated_at: 7,
    };
    store
        .put_secret_version(None, &secret, &version("s1", 1))
        .await
        .unwrap();
    let second = SecretRow {
        current_version: 2,
        updated_at: 8,
        ..secret.clone()
    };
    store
        .put_secret_version(Some(&secret), &second, &version("s1", 2))
        .await
        .unwrap();
    store
        .put_policy("devs", "permit(principal, action, resource);", 3)
        .await
        .unwrap();
    store.insert_token(&token("tok_a", "p1", 1)).await.unwrap();
    store.insert_token(&token("tok_b", "p1", 2)).await.unwrap();
    store.revoke_token("tok_b", 20).await.unwrap();
    store.claim_expired_tokens(80, 0, 1).await.unwrap();
    store.mark_expiry_recorded("tok_a", 81).await.unwrap();
    store
        .take_lease("token_expiry", "node-a", Duration::from_secs(60))
        .await
        .unwrap();
    store.insert_audit_signing_key(&[7, 0, 255]).await.unwrap();

    let (signer, _) = AuditSigner::generate().unwrap();
    let events = continue_chain(None, 1200, "fill");
    for batch in events.chunks(400) {
        store.append_audit(batch).await.unwrap();
    }
    for seq in [500u64, 1000] {
        let head = hex_to_array(&events[usize::try_from(seq).unwrap() - 1].hash);
        store
            .append_checkpoint(&signer.sign(seq, &head, chrono::DateTime::UNIX_EPOCH))
            .await
            .unwrap();
    }
    signer
}

/// Asserts that everything the Store trait reads is the same in both stores.
async fn assert_same_contents(a: &dyn Store, b: &dyn Store) {
    assert_eq!(
        a.seal_config().await.unwrap(),
        b.seal_config().await.unwrap()
    );
    assert_eq!(
        a.list_vaults().await.unwrap(),
        b.list_vaults().await.unwrap()
    );
    let secrets = a.list_secrets("v1").await.unwrap();
    assert_eq!(secrets, b.list_secrets("v1").await.unwrap());
    for secret in &secrets {
        for n in 1..=secret.current_version {
            let (x, y) = (
                a.secret_version(&secret.id, n).await.unwrap().unwrap(),
                b.secret_version(&secret.id, n).await.unwrap().unwrap(),
            );
            assert!(x == y, "version {n} of `{}` differs", secret.name);
        }
    }
    assert_eq!(
        a.list_principals().await.unwrap(),
        b.list_principals().await.unwrap()
    );
    assert_eq!(
        a.list_policies().await.unwrap(),
        b.list_policies().await.unwrap()
    );
    assert_eq!(
        a.list_tokens(None).await.unwrap(),
        b.list_tokens(None).await.unwrap()
    );
    assert_eq!(
        a.audit_events(0, 5000).await.unwrap(),
        b.audit_events(0, 5000).await.unwrap()
    );
    assert_eq!(
        a.checkpoints(0, 100).await.unwrap(),
        b.checkpoints(0, 100).await.unwrap()
    );
    assert_eq!(
        a.audit_signing_key().await.unwrap(),
        b.audit_signing_key().await.unwrap()
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

fn scim_user(id: &str, name: &str, email: &str) -> ScimUserRow {
    ScimUserRow {
        principal_id: id.into(),
        external_id: Some(format!("ext-{name}")),
        user_name: name.into(),
        email: Some(email.into()),
        resource: format!(r#"{{"userName":"{name}"}}"#),
        version: 1,
        created_at: 5,
        updated_at: 5,
        active: true,
    }
}

async fn scim_groups_set_cedar_groups(store: &dyn Store) {
    store
        .put_scim_user(&scim_user("p1", "Ann", "ann@example.com"), None)
        .await
        .unwrap();
    store
        .put_scim_user(&scim_user("p2", "bob", "bob@example.com"), None)
        .await
        .unwrap();
    let duplicate = store
        .put_scim_user(&scim_user("p3", "ANN", "x@example.com"), None)
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "{duplicate:?}"
    );

    let mut group = ScimGroupRow {
        id: "g1".into(),
        display_name: "ops team".into(),
        external_id: None,
        resource: "{}".into(),
        version: 1,
        created_at: 6,
        updated_at: 6,
        members: vec!["p1".into(), "p2".into()],
    };
    store.put_scim_group(&group, None).await.unwrap();
    assert_eq!(
        store.principal_by_id("p1").await.unwrap().unwrap().groups,
        ["ops team"]
    );
    assert_eq!(
        store.principal_by_id("p2").await.unwrap().unwrap().groups,
        ["ops team"]
    );

    group.members = vec!["p2".into()];
    group.display_name = "ops".into();
    group.version = 2;
    let stale = store.put_scim_group(&group, Some(5)).await;
    assert!(matches!(stale, Err(StoreError::Concurrent(_))), "{stale:?}");
    store.put_scim_group(&group, Some(1)).await.unwrap();
    assert!(
        store
            .principal_by_id("p1")
            .await
            .unwrap()
            .unwrap()
            .groups
            .is_empty()
    );
    assert_eq!(
        store.principal_by_id("p2").await.unwrap().unwrap().groups,
        ["ops"]
    );
    assert_eq!(
        store.scim_group("g1").await.unwrap().unwrap().members,
        ["p2"]
    );

    assert!(store.delete_scim_user("p2").await.unwrap());
    assert!(
        store
            .principal_by_id("p2")
            .await
            .unwrap()
            .unwrap()
            .groups
            .is_empty()
    );
    assert!(
        store
            .scim_group("g1")
            .await
            .unwrap()
            .unwrap()
            .members
            .is_empty()
    );
    assert!(store.delete_scim_group("g1").await.unwrap());
    assert!(!store.delete_scim_group("g1").await.unwrap());
}

async fn scim_users_link_by_identifiers(store: &dyn Store) {
    store
        .put_scim_user(&scim_user("p1", "Ann", "ann@example.com"), None)
        .await
        .unwrap();
    let by = |link| async move {
        store
            .find_scim_user(link)
            .await
            .unwrap()
            .map(|u| u.principal_id)
    };
    assert_eq!(
        by(ScimLink::ExternalId("ext-Ann")).await.as_deref(),
        Some("p1")
    );
    assert_eq!(by(ScimLink::ExternalId("ext-ann")).await, None);
    assert_eq!(by(ScimLink::UserName("ANN")).await.as_deref(), Some("p1"));
    assert_eq!(
        by(ScimLink::Email("Ann@Example.com")).await.as_deref(),
        Some("p1")
    );
    assert_eq!(by(ScimLink::Email("other@example.com")).await, None);
}

async fn offboarding_revokes_live_tokens(store: &dyn Store) {
    store
        .create_principal(&principal("p1", "ann", &[]))
        .await
        .unwrap();
    let mut live = token("tok_live", "p1", 1);
    live.expires_at = 1000;
    let mut done = token("tok_done", "p1", 2);
    done.expires_at = 1000;
    done.revoked_at = Some(20);
    store.insert_token(&live).await.unwrap();
    store.insert_token(&done).await.unwrap();
    store
        .insert_token(&token("tok_expired", "p1", 3))
        .await
        .unwrap();

    let result = store.offboard_principal("p1", 100).await.unwrap();
    assert_eq!(result.revoked_tokens, ["tok_live"]);
    assert!(!store.principal_by_id("p1").await.unwrap().unwrap().active);
    let live = store.token_by_accessor("tok_live").await.unwrap().unwrap();
    assert_eq!(live.revoked_at, Some(100));
    let done = store.token_by_accessor("tok_done").await.unwrap().unwrap();
    assert_eq!(
        done.revoked_at,
        Some(20),
        "an earlier revocation keeps its time"
    );
    assert!(
        store
            .offboard_principal("p1", 200)
            .await
            .unwrap()
            .revoked_tokens
            .is_empty()
    );
}

fn access_request(id: &str, requester: &str, approvals: i64) -> AccessRequestRow {
    AccessRequestRow {
        id: id.into(),
        requester_id: requester.into(),
        requester: format!("User::\"{requester}\""),
        resources: vec![AccessResource {
            vault: "prod".into(),
            secret: Some("db".into()),
        }],
        duration: 600,
        reason: "INC-1".into(),
        ticket: None,
        kind: "review".into(),
        approvals_required: approvals,
        status: "pending".into(),
        created_at: 100,
        expires_at: 1000,
        decided_at: None,
        decided_by: None,
        grant_id: None,
        reviews: Vec::new(),
    }
}

fn review(request: &str, reviewer: &str, verdict: &str, at: i64) -> AccessReviewRow {
    AccessReviewRow {
        request_id: request.into(),
        reviewer_id: reviewer.into(),
        reviewer: format!("User::\"{reviewer}\""),
        verdict: verdict.into(),
        comment: Some(format!("{verdict} by {reviewer}")),
        created_at: at,
    }
}

fn grant_template(id: &str) -> GrantRow {
    GrantRow {
        id: id.into(),
        request_id: String::new(),
        principal_id: String::new(),
        principal: String::new(),
        resources: Vec::new(),
        approved_by: String::new(),
        reason: String::new(),
        kind: String::new(),
        starts_at: 0,
        expires_at: 0,
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    }
}

async fn access_requests_reviews_and_grants(store: &dyn Store) {
    for (id, name) in [("p1", "ann"), ("p2", "bob"), ("p3", "cat")] {
        store
            .create_principal(&principal(id, name, &[]))
            .await
            .unwrap();
    }
    store
        .insert_access_request(&access_request("r1", "p1", 2), None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_access_request(&access_request("r1", "p1", 2), None)
            .await,
        Err(StoreError::Conflict(_))
    ));

    // The first approval of two leaves it pending; the same reviewer cannot vote twice.
    let first = store
        .review_access_request(
            &review("r1", "p2", "approve", 200),
            &grant_template("g1"),
            200,
        )
        .await
        .unwrap();
    let ReviewOutcome::Recorded { request, grant } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        (request.status.as_str(), request.approvals()),
        ("pending", 1)
    );
    assert!(grant.is_none());
    assert!(matches!(
        store
            .review_access_request(
                &review("r1", "p2", "approve", 210),
                &grant_template("g1"),
                210
            )
            .await
            .unwrap(),
        ReviewOutcome::AlreadyReviewed(_)
    ));

    // The second creates the grant, its clock starting at the approval.
    let second = store
        .review_access_request(
            &review("r1", "p3", "approve", 300),
            &grant_template("g1"),
            300,
        )
        .await
        .unwrap();
    let ReviewOutcome::Recorded { request, grant } = second else {
        panic!("{second:?}")
    };
    assert_eq!(request.status, "approved");
    assert_eq!(request.grant_id.as_deref(), Some("g1"));
    assert_eq!(request.reviews.len(), 2);
    let grant = grant.unwrap();
    assert_eq!((grant.starts_at, grant.expires_at), (300, 900));
    assert_eq!(grant.approved_by, "User::\"p2\",User::\"p3\"");
    assert_eq!(grant.principal, "User::\"p1\"");
    assert_eq!(store.grant("g1").await.unwrap(), Some(grant.clone()));
    assert!(matches!(
        store
            .review_access_request(&review("r1", "p1", "deny", 310), &grant_template("g2"), 310)
            .await
            .unwrap(),
        ReviewOutcome::NotPending(_)
    ));
    assert_eq!(
        store.live_grants("p1", 899).await.unwrap(),
        vec![grant.clone()]
    );
    assert!(store.live_grants("p1", 900).await.unwrap().is_empty());

    // A pending request past its expiry is refused, then expired by the sweep once.
    store
        .insert_access_request(&access_request("r2", "p1", 1), None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .review_access_request(
                &review("r2", "p2", "approve", 1000),
                &grant_template("g2"),
                1000
            )
            .await
            .unwrap(),
        ReviewOutcome::Expired(_)
    ));
    let expired = store.expire_access_requests(1000, 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].status, "expired");
    assert!(
        store
            .expire_access_requests(1000, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Grant expiry is recorded once; a revoked grant is not an expiry.
    assert_eq!(
        store.unrecorded_grant_expiries(899, 10).await.unwrap(),
        vec![]
    );
    assert_eq!(
        store
            .unrecorded_grant_expiries(900, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.mark_grant_expiry_recorded("g1", 900).await.unwrap());
    assert!(!store.mark_grant_expiry_recorded("g1", 901).await.unwrap());
    assert!(
        store
            .unrecorded_grant_expiries(900, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Offboarding revokes live grants and cancels pending requests in its transaction.
    let mut live = access_request("r3", "p1", 1);
    live.expires_at = 5000;
    store.insert_access_request(&live, None).await.unwrap();
    store
        .review_access_request(
            &review("r3", "p2", "approve", 1100),
            &grant_template("g3"),
            1100,
        )
        .await
        .unwrap();
    let mut pending = access_request("r4", "p1", 1);
    pending.expires_at = 5000;
    store.insert_access_request(&pending, None).await.unwrap();
    let result = store.offboard_principal("p1", 1200).await.unwrap();
    assert_eq!(
        result
            .revoked_grants
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>(),
        ["g3"]
    );
    assert_eq!(result.revoked_grants[0].revoked_at, Some(1200));
    assert_eq!(
        result
            .cancelled_requests
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["r4"]
    );
    assert!(store.live_grants("p1", 1200).await.unwrap().is_empty());
    assert!(
        store
            .revoke_grant("g3", "x", "again", 1300)
            .await
            .unwrap()
            .is_none()
    );

    let listed = store
        .list_access_requests(&AccessRequestFilter {
            status: Some("cancelled".into()),
            requester_id: Some("p1".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "r4");
    let all = store
        .list_access_requests(&AccessRequestFilter {
            limit: 10,
            ..AccessRequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let approved = all.iter().find(|r| r.id == "r1").unwrap();
    assert_eq!(approved.reviews.len(), 2, "lists carry the reviews");
    let grants = store
        .list_grants(&GrantFilter {
            principal_id: Some("p1".into()),
            limit: 10,
            ..GrantFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(grants.len(), 2);

    store
        .put_vault_settings("v_missing_is_not_checked", "{}", 1)
        .await
        .unwrap_err();
}

async fn scim_tokens_are_separate(store: &dyn Store) {
    let row = ScimTokenRow {
        accessor: "scim_1".into(),
        hash: [9; 32],
        created_at: 1,
        expires_at: None,
        revoked_at: None,
        created_by: "User::\"root\"".into(),
    };
    store.insert_scim_token(&row).await.unwrap();
    assert_eq!(
        store.scim_token_by_hash(&[9; 32]).await.unwrap(),
        Some(row.clone())
    );
    assert!(store.token_by_hash(&[9; 32]).await.unwrap().is_none());
    assert!(store.revoke_scim_token("scim_1", 5).await.unwrap());
    assert!(!store.revoke_scim_token("scim_1", 6).await.unwrap());
    assert_eq!(
        store.list_scim_tokens().await.unwrap()[0].revoked_at,
        Some(5)
    );
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
    sqlite_case!(secret_for_read_joins_vault_secret_and_current_version);
    sqlite_case!(secrets_for_read_keeps_request_order);
    sqlite_case!(principals_and_groups);
    sqlite_case!(tokens_revoke_and_renew);
    sqlite_case!(policies_replace_by_name);
    sqlite_case!(audit_appends_in_order_and_refuses_duplicates);
    sqlite_case!(append_audit_rejects_a_batch_that_does_not_continue_the_head);
    sqlite_case!(lists_sort_names_by_bytes);
    sqlite_case!(checkpoints_are_stored_in_order_once);
    sqlite_case!(audit_signing_key_is_created_once);
    sqlite_case!(audit_search_filters_in_sql);
    sqlite_case!(audit_search_by_request_and_grant);
    sqlite_case!(tokens_commit_with_their_audit_event);
    sqlite_case!(concurrent_policy_writes_all_succeed);
    sqlite_case!(connectors_replace_by_kind_and_name);
    sqlite_case!(login_attempts_complete_once_and_expire);
    sqlite_case!(leases_have_one_holder);
    sqlite_case!(scim_groups_set_cedar_groups);
    sqlite_case!(scim_users_link_by_identifiers);
    sqlite_case!(offboarding_revokes_live_tokens);
    sqlite_case!(scim_tokens_are_separate);

    /// Fails when a migration adds a table or column that the SQLite-to-PostgreSQL copy
    /// does not list in `transfer::TABLES`, so that it would be left behind.
    #[tokio::test]
    async fn schema_has_only_copied_tables() {
        let (_dir, store) = sqlite().await;
        let schema = transfer::sqlite_schema(store.pool()).await.unwrap();
        transfer::check_schema(&schema, transfer::Side::Source).unwrap();
        let names: Vec<&str> = schema
            .keys()
            .map(String::as_str)
            .filter(|name| !transfer::LOCAL_TABLES.contains(name))
            .collect();
        let mut copied: Vec<&str> = transfer::TABLES.iter().map(|t| t.name).collect();
        copied.sort_unstable();
        assert_eq!(names, copied);
    }

    #[tokio::test]
    async fn check_schema_rejects_unlisted_tables_and_columns() {
        let (_dir, store) = sqlite().await;
        sqlx::query("ALTER TABLE vaults ADD COLUMN region TEXT")
            .execute(store.pool())
            .await
            .unwrap();
        let schema = transfer::sqlite_schema(store.pool()).await.unwrap();
        let error = transfer::check_schema(&schema, transfer::Side::Source).unwrap_err();
        assert!(
            matches!(&error, transfer::TransferError::ColumnMismatch { table, .. } if table == "vaults"),
            "{error}"
        );

        let (_dir, store) = sqlite().await;
        sqlx::query("CREATE TABLE identities (id TEXT PRIMARY KEY)")
            .execute(store.pool())
            .await
            .unwrap();
        let schema = transfer::sqlite_schema(store.pool()).await.unwrap();
        let error = transfer::check_schema(&schema, transfer::Side::Source).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the source database has a table `identities` that this `lk` cannot copy; use the `lk` release that created the database"
        );
    }
    sqlite_case!(expired_tokens_are_claimed_once);
    sqlite_case!(access_requests_reviews_and_grants);

    #[tokio::test]
    async fn concurrent_holders_never_share_work() {
        let (dir, a) = sqlite().await;
        let b = SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap();
        super::concurrent_holders_never_share_work(&a, &b).await;
    }
    sqlite_case!(sink_lease_admits_one_node_at_a_time);
    sqlite_case!(exports_are_recorded_in_order);
    sqlite_case!(purge_keeps_the_head_and_later_events);

    /// The audit connection leaves checkpoints to the pool, so that its commits never wait
    /// for one. The write-ahead log must still be checkpointed and reused, not grow with
    /// every append.
    #[tokio::test]
    async fn audit_appends_keep_the_write_ahead_log_bounded() {
        let (dir, store) = sqlite().await;
        let mut head = None;
        for _ in 0..2000 {
            let events = continue_chain(head.as_ref(), 1, "wal");
            store.append_audit(&events).await.unwrap();
            head = store.audit_head().await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("test.db-wal"))
            .unwrap()
            .len();
        // Without checkpoints, 2,000 commits of a few 4 KiB pages each would leave a log of
        // tens of MiB.
        assert!(wal < 4 << 20, "the log grew to {wal} bytes");
    }

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
    postgres_case!(secret_for_read_joins_vault_secret_and_current_version);
    postgres_case!(secrets_for_read_keeps_request_order);
    postgres_case!(principals_and_groups);
    postgres_case!(tokens_revoke_and_renew);
    postgres_case!(policies_replace_by_name);
    postgres_case!(audit_appends_in_order_and_refuses_duplicates);
    postgres_case!(append_audit_rejects_a_batch_that_does_not_continue_the_head);
    postgres_case!(lists_sort_names_by_bytes);
    postgres_case!(checkpoints_are_stored_in_order_once);
    postgres_case!(audit_signing_key_is_created_once);
    postgres_case!(audit_search_filters_in_sql);
    postgres_case!(audit_search_by_request_and_grant);
    postgres_case!(tokens_commit_with_their_audit_event);
    postgres_case!(concurrent_policy_writes_all_succeed);
    postgres_case!(connectors_replace_by_kind_and_name);
    postgres_case!(login_attempts_complete_once_and_expire);
    postgres_case!(leases_have_one_holder);
    postgres_case!(scim_groups_set_cedar_groups);
    postgres_case!(scim_users_link_by_identifiers);
    postgres_case!(offboarding_revokes_live_tokens);
    postgres_case!(scim_tokens_are_separate);
    postgres_case!(expired_tokens_are_claimed_once);
    postgres_case!(access_requests_reviews_and_grants);

    #[tokio::test]
    async fn concurrent_holders_never_share_work() {
        with_postgres(|url| async move {
            let a = open_postgres(&url).await;
            let b = open_postgres(&url).await;
            super::concurrent_holders_never_share_work(&a, &b).await;
            a.pool().close().await;
            b.pool().close().await;
        })
        .await;
    }
    postgres_case!(sink_lease_admits_one_node_at_a_time);
    postgres_case!(exports_are_recorded_in_order);
    postgres_case!(purge_keeps_the_head_and_later_events);

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
    async fn schema_has_only_copied_tables() {
        with_postgres(|url| async move {
            let store = open_postgres(&url).await;
            let schema = transfer::postgres_schema(store.pool()).await.unwrap();
            transfer::check_schema(&schema, transfer::Side::Destination).unwrap();
            store.pool().close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn copy_moves_every_row_and_verifies() {
        with_postgres(|url| async move {
            let (_dir, source) = sqlite().await;
            let signer = fill_deployment(&source).await;
            let destination = transfer::open_destination(&url).await.unwrap();

            let mut copying = Vec::new();
            let mut verified = 0;
            let report =
                transfer::copy_to_postgres(&source, &destination, None, &mut |p| match p {
                    transfer::Progress::Copying { table, done, total } => {
                        copying.push((table.to_string(), done, total))
                    }
                    transfer::Progress::Verifying { done, .. } => verified = done,
                })
                .await
                .unwrap();

            let rows: BTreeMap<&str, u64> = report.tables.iter().copied().collect();
            assert_eq!(rows["audit_events"], 1200);
            assert_eq!(rows["audit_checkpoints"], 2);
            assert_eq!(rows["secret_versions"], 2);
            assert_eq!(rows["tokens"], 3);
            assert_eq!(rows["group_members"], 3);
            assert_eq!(rows["job_leases"], 1);
            assert_eq!(rows["meta"], 2, "seal config and audit signing key");
            assert_eq!(report.tables.len(), transfer::TABLES.len());
            assert_eq!(report.audit.chain.last_seq, 1200);
            assert_eq!(report.audit.checkpoints, 2);
            assert_eq!(report.audit.last_checkpoint_seq, 1000);
            assert!(!report.signatures_checked);
            assert!(
                copying.contains(&("audit_events".to_string(), 1000, 1200)),
                "progress after each read batch: {copying:?}"
            );
            assert_eq!(verified, 1200);
            assert_same_contents(&source, &destination).await;

            let token = destination
                .token_by_accessor("tok_a")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(token.hash, [1; 32]);
            let unrecorded: Vec<String> = destination
                .claim_expired_tokens(1000, 0, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.accessor)
                .collect();
            assert_eq!(
                unrecorded,
                ["tok_root"],
                "tok_a's recorded expiry and tok_b's revocation were copied"
            );
            assert!(
                !destination
                    .take_lease("token_expiry", "node-b", Duration::from_secs(1))
                    .await
                    .unwrap(),
                "the lease was copied"
            );

            let mut verifier = AuditVerifier::new(
                signer.public_key(),
                ChainVerifier::new(),
                destination.checkpoints(0, 100).await.unwrap(),
            )
            .unwrap();
            for event in destination.audit_events(0, 5000).await.unwrap() {
                verifier.push(&event).unwrap();
            }
            verifier.finish().unwrap();
            destination.pool().close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn copy_checks_signatures_with_a_public_key() {
        with_postgres(|url| async move {
            let (_dir, source) = sqlite().await;
            fill_deployment(&source).await;
            let destination = transfer::open_destination(&url).await.unwrap();
            let (stranger, _) = AuditSigner::generate().unwrap();
            let result = transfer::copy_to_postgres(
                &source,
                &destination,
                Some(stranger.public_key()),
                &mut |_| {},
            )
            .await;
            let Err(transfer::TransferError::Audit(error)) = result else {
                panic!("another key's signature was accepted: {result:?}");
            };
            assert_eq!(error.seq(), 500, "{error}");
            assert!(
                destination.list_vaults().await.unwrap().is_empty(),
                "rolled back"
            );
            destination.pool().close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn copy_names_the_first_bad_audit_event() {
        with_postgres(|url| async move {
            let (_dir, source) = sqlite().await;
            fill_deployment(&source).await;
            sqlx::query("UPDATE audit_events SET action = 'delete' WHERE seq = 777")
                .execute(source.pool())
                .await
                .unwrap();
            let destination = transfer::open_destination(&url).await.unwrap();
            let result = transfer::copy_to_postgres(&source, &destination, None, &mut |_| {}).await;
            let Err(transfer::TransferError::Audit(error)) = result else {
                panic!("an edited event was copied: {result:?}");
            };
            assert_eq!(error.seq(), 777);
            assert_eq!(
                error.to_string(),
                "audit chain broken at sequence 777: the event's contents do not match its hash (edited)"
            );
            for table in transfer::TABLES {
                let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
                    .fetch_one(destination.pool())
                    .await
                    .unwrap();
                assert_eq!(rows, 0, "table `{}` is empty after the rollback", table.name);
            }
            destination.pool().close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn copy_refuses_a_destination_with_rows() {
        with_postgres(|url| async move {
            let (_dir, source) = sqlite().await;
            fill_deployment(&source).await;
            let destination = transfer::open_destination(&url).await.unwrap();
            destination
                .create_vault(&vault("v9", "already-here"))
                .await
                .unwrap();
            let result = transfer::copy_to_postgres(&source, &destination, None, &mut |_| {}).await;
            let Err(error @ transfer::TransferError::DestinationNotEmpty { .. }) = result else {
                panic!("copied into a database with rows: {result:?}");
            };
            assert_eq!(
                error.to_string(),
                "the destination database is not empty: table `vaults` has rows"
            );
            let vaults = destination.list_vaults().await.unwrap();
            assert_eq!(vaults.len(), 1, "nothing was added");
            destination.pool().close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn open_destination_refuses_foreign_tables() {
        with_postgres(|url| async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query("CREATE TABLE invoices (id BIGINT)")
                .execute(&pool)
                .await
                .unwrap();
            let result = transfer::open_destination(&url).await;
            let Err(error @ transfer::TransferError::ForeignTable { .. }) = result else {
                panic!("opened a database of another application");
            };
            assert!(error.to_string().contains("`invoices`"), "{error}");
            let schema = transfer::postgres_schema(&pool).await.unwrap();
            assert_eq!(
                schema.keys().collect::<Vec<_>>(),
                ["invoices"],
                "no migration ran"
            );
            pool.close().await;
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

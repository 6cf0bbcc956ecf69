//! Background jobs over a real SQLite store: leases and the token expiry job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use latchkey_core::audit::ChainVerifier;
use latchkey_core::crypto::Key256;
use latchkey_server::jobs::{JOBS, LEASE_TTL, run_job};
use latchkey_server::state::{AppState, Settings};
use latchkey_server::sys::{UnsealMethod, initialize};
use latchkey_store::{AuditFilter, PrincipalRow, SqliteStore, Store, TokenRow};

struct Harness {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    store: SqliteStore,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    let state = Arc::new(
        AppState::new(Arc::new(store.clone()), Settings::default())
            .await
            .unwrap(),
    );
    let initialized = initialize(&state, UnsealMethod::KeyFile(Key256::generate().unwrap()))
        .await
        .unwrap();
    state.keyring.install_root(initialized.root_key);
    store
        .create_principal(&PrincipalRow {
            id: "prn_alice".into(),
            kind: "user".into(),
            name: "alice".into(),
            active: true,
            groups: Vec::new(),
            created_at: 1,
        })
        .await
        .unwrap();
    Harness {
        _dir: dir,
        state,
        store,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Inserts a token of alice's that expires at `expires_at`.
async fn insert_token(store: &SqliteStore, accessor: &str, hash: u8, expires_at: i64) {
    store
        .insert_token(&TokenRow {
            accessor: accessor.into(),
            hash: [hash; 32],
            principal_id: "prn_alice".into(),
            kind: "user".into(),
            created_at: expires_at - 60,
            ttl: 60,
            expires_at,
            max_expires_at: expires_at + 60,
            revoked_at: None,
            created_by: None,
        })
        .await
        .unwrap();
}

async fn expiry_events(store: &SqliteStore) -> Vec<latchkey_core::audit::AuditEvent> {
    store
        .search_audit(&AuditFilter {
            limit: 1000,
            action: Some("token.expire".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
}

const TOKEN_EXPIRY: usize = 0;

#[tokio::test]
async fn token_expiry_records_each_token_once() {
    let h = harness().await;
    let past = now() - 10;
    insert_token(&h.store, "tok_one", 1, past).await;
    insert_token(&h.store, "tok_two", 2, past - 5).await;
    insert_token(&h.store, "tok_live", 3, now() + 3600).await;
    insert_token(&h.store, "tok_revoked", 4, past).await;
    h.store.revoke_token("tok_revoked", past - 1).await.unwrap();

    let job = &JOBS[TOKEN_EXPIRY];
    assert_eq!(job.name, "token_expiry");
    assert_eq!(run_job(&h.state, job, "node-a").await.unwrap(), 2);
    assert_eq!(run_job(&h.state, job, "node-a").await.unwrap(), 0);
    assert_eq!(run_job(&h.state, job, "node-b").await.unwrap(), 0);

    let events = expiry_events(&h.store).await;
    let resources: Vec<&str> = events.iter().map(|e| e.record.resource.as_str()).collect();
    assert_eq!(
        resources,
        ["Token::\"tok_two\"", "Token::\"tok_one\""],
        "one event per expired, unrevoked token, oldest expiry first"
    );
    let event = &events[0].record;
    assert_eq!(event.principal, "system");
    assert_eq!(event.detail["principal"], "User::\"alice\"");
    assert!(event.detail["expired_at"].ends_with('Z'));
    assert_eq!(event.token_id, None);

    let mut chain = ChainVerifier::new();
    for event in h.store.audit_events(0, 1000).await.unwrap() {
        chain.push(&event).unwrap();
    }
}

#[tokio::test]
async fn token_expiry_waits_for_the_lease_holder() {
    let h = harness().await;
    insert_token(&h.store, "tok_one", 1, now() - 10).await;
    let job = &JOBS[TOKEN_EXPIRY];
    assert!(
        h.store
            .take_lease(job.name, "node-b", LEASE_TTL)
            .await
            .unwrap()
    );
    assert_eq!(run_job(&h.state, job, "node-a").await.unwrap(), 0);
    assert!(expiry_events(&h.store).await.is_empty());

    // node-b is killed: its lease runs out instead of being released.
    h.store
        .take_lease(job.name, "node-b", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(run_job(&h.state, job, "node-a").await.unwrap(), 1);
    assert!(
        h.store
            .take_lease(job.name, "node-b", LEASE_TTL)
            .await
            .unwrap(),
        "node-a released the lease after its run"
    );
}

#[tokio::test]
async fn token_expiry_recovers_stale_claims_once() {
    let h = harness().await;
    let past = now() - 10;
    insert_token(&h.store, "tok_recorded", 1, past).await;
    let job = &JOBS[TOKEN_EXPIRY];
    assert_eq!(run_job(&h.state, job, "node-a").await.unwrap(), 1);

    // A server stopped after appending the event of tok_recorded but before marking it,
    // and another one right after claiming tok_claimed.
    insert_token(&h.store, "tok_claimed", 2, past).await;
    sqlx::query(
        "UPDATE tokens SET expiry_recorded_at = NULL, expiry_claimed_at = ? \
         WHERE accessor IN ('tok_recorded', 'tok_claimed')",
    )
    .bind(now() - 3600)
    .execute(h.store.pool())
    .await
    .unwrap();

    assert_eq!(run_job(&h.state, job, "node-b").await.unwrap(), 1);
    let resources: Vec<String> = expiry_events(&h.store)
        .await
        .into_iter()
        .map(|e| e.record.resource)
        .collect();
    assert_eq!(
        resources,
        ["Token::\"tok_recorded\"", "Token::\"tok_claimed\""],
        "each token has exactly one event"
    );
    assert_eq!(run_job(&h.state, job, "node-b").await.unwrap(), 0);
}

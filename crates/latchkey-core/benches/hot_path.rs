//! Benchmarks of the pieces every secret read goes through: parsing the reference and the
//! token, deciding with Cedar, opening the sealed value, and chaining the audit event.
//!
//! Run with `cargo bench -p latchkey-core`. Compare figures from one run on one machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use latchkey_core::audit::{AuditRecord, GENESIS_HASH, Outcome, chain_hash};
use latchkey_core::crypto::{self, Key256, aad};
use latchkey_core::policy::{
    AccessRequest, Action, PolicyEngine, Principal, PrincipalKind, RequestContext, Resource,
};
use latchkey_core::reference::SecretRef;
use latchkey_core::token::{RawToken, TokenKind};

fn references(c: &mut Criterion) {
    c.bench_function("reference/parse", |b| {
        b.iter(|| SecretRef::parse(black_box("lk://prod/db/password?version=3")).unwrap())
    });
    c.bench_function("reference/parse_encoded", |b| {
        b.iter(|| {
            SecretRef::parse(black_box(
                "lk://%C3%A9quipe/my%20db.conf%2Fmain/mot%20de%20passe",
            ))
            .unwrap()
        })
    });
}

fn tokens(c: &mut Criterion) {
    let token = RawToken::generate(TokenKind::Token).unwrap();
    let text = token.expose().to_string();
    c.bench_function("token/parse_and_hash", |b| {
        b.iter(|| RawToken::parse(black_box(&text)).unwrap().hash())
    });
}

fn sealing(c: &mut Criterion) {
    let key = Key256::generate().unwrap();
    let associated = aad::secret_version("vlt_1", "sec_1", 3);
    let value = vec![7u8; 64];
    let sealed = crypto::seal(&key, &associated, &value).unwrap();
    c.bench_function("crypto/seal_64b", |b| {
        b.iter(|| crypto::seal(&key, &associated, black_box(&value)).unwrap())
    });
    c.bench_function("crypto/open_64b", |b| {
        b.iter(|| crypto::open(&key, &associated, black_box(&sealed)).unwrap())
    });
}

/// Policies of the shape a growing deployment has: one per team, each scoped to its group.
fn team_policies(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let text = format!(
                "permit(principal in Group::\"team-{i}\", action == Action::\"read\", resource)\n\
                 when {{ resource.vault.hasTag(\"team\") && resource.vault.getTag(\"team\") == \"team-{i}\" }};"
            );
            (format!("team-{i}"), text)
        })
        .collect()
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy/decide");
    for count in [10usize, 100, 1000] {
        let policies = team_policies(count);
        let engine =
            PolicyEngine::new(policies.iter().map(|(n, t)| (n.as_str(), t.as_str()))).unwrap();
        let principal = Principal {
            kind: PrincipalKind::User,
            name: "alice".into(),
            groups: vec!["team-7".into()],
        };
        let resource = Resource::Secret {
            vault: "payments".into(),
            vault_tags: BTreeMap::from([("team".into(), "team-7".into())]),
            name: "db".into(),
            tags: BTreeMap::new(),
        };
        let context = RequestContext {
            token_kind: "user".into(),
            now: 1_800_000_000,
            grant: false,
            mfa: false,
            duration: 0,
        };
        let request = AccessRequest {
            principal: &principal,
            action: Action::Read,
            resource: &resource,
            context: &context,
        };
        assert!(engine.decide(&request).allowed);
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &request,
            |b, request| b.iter(|| engine.decide(black_box(request))),
        );
    }
    group.finish();
}

/// Decisions on a different secret each time, more of them than the engine keeps entities
/// for, so that every decision builds its entities.
fn cold_decisions(c: &mut Criterion) {
    let policies = team_policies(100);
    let engine = PolicyEngine::new(policies.iter().map(|(n, t)| (n.as_str(), t.as_str()))).unwrap();
    let principal = Principal {
        kind: PrincipalKind::User,
        name: "alice".into(),
        groups: vec!["team-7".into()],
    };
    let resources: Vec<Resource> = (0..10_000)
        .map(|n| Resource::Secret {
            vault: "payments".into(),
            vault_tags: BTreeMap::from([("team".into(), "team-7".into())]),
            name: format!("db-{n}"),
            tags: BTreeMap::new(),
        })
        .collect();
    let context = RequestContext {
        token_kind: "user".into(),
        now: 1_800_000_000,
        grant: false,
        mfa: false,
        duration: 0,
    };
    let mut next = resources.iter().cycle();
    c.bench_function("policy/decide_cold/100", |b| {
        b.iter(|| {
            let request = AccessRequest {
                principal: &principal,
                action: Action::Read,
                resource: next.next().unwrap(),
                context: &context,
            };
            engine.decide(black_box(&request))
        })
    });
}

/// One group with a statement per vault, as `bench/compare.sh` loads for its scale run: a
/// request is evaluated against the statement of its own vault only.
fn per_vault_decisions(c: &mut Criterion) {
    let policies: Vec<(String, String)> = (0..1000)
        .map(|i| {
            let text = format!(
                "permit(principal in Group::\"readers\", action == Action::\"read\", resource in Vault::\"v{i}\");"
            );
            (format!("read-v{i}"), text)
        })
        .collect();
    let engine = PolicyEngine::new(policies.iter().map(|(n, t)| (n.as_str(), t.as_str()))).unwrap();
    let principal = Principal {
        kind: PrincipalKind::User,
        name: "alice".into(),
        groups: vec!["readers".into()],
    };
    let resource = Resource::Secret {
        vault: "v500".into(),
        vault_tags: BTreeMap::new(),
        name: "db".into(),
        tags: BTreeMap::new(),
    };
    let context = RequestContext {
        token_kind: "user".into(),
        now: 1_800_000_000,
        grant: false,
        mfa: false,
        duration: 0,
    };
    let request = AccessRequest {
        principal: &principal,
        action: Action::Read,
        resource: &resource,
        context: &context,
    };
    assert_eq!(
        engine.decide(&request).policies,
        vec!["read-v500".to_owned()]
    );
    c.bench_function("policy/decide_group_per_vault/1000", |b| {
        b.iter(|| engine.decide(black_box(&request)))
    });
}

fn audit_chain(c: &mut Criterion) {
    let record = AuditRecord {
        time: "2026-12-04T19:46:50.123456Z".into(),
        request_id: "5f0c7a3e-7d6b-4b0e-9a55-2f1d8c0e4b11".into(),
        principal: "User::\"alice\"".into(),
        action: "read".into(),
        resource: "Secret::\"prod/db\"".into(),
        outcome: Outcome::Allowed,
        reason: None,
        policies: vec!["devs-read-staging".into()],
        client_addr: Some("127.0.0.1".into()),
        token_id: Some("tok_0123456789abcdef".into()),
        detail: BTreeMap::from([
            ("field".into(), "password".into()),
            ("version".into(), "3".into()),
        ]),
    };
    c.bench_function("audit/chain_hash", |b| {
        b.iter(|| chain_hash(black_box(42), &GENESIS_HASH, black_box(&record)))
    });
}

criterion_group!(
    benches,
    references,
    tokens,
    sealing,
    decisions,
    cold_decisions,
    per_vault_decisions,
    audit_chain
);
criterion_main!(benches);

//! Benchmarks of the durable audit append on SQLite (WAL, `synchronous=FULL`), the step
//! every secret read waits for before its response.
//!
//! - `audit/store_batch/N`: one `append_audit` transaction of N events, so one fsync
//!   for N events. Criterion reports the time per transaction.
//! - `audit/group_commit/N`: N requests append at once through [`AuditLog`], whose
//!   writer batches them into as few transactions as it can. Criterion reports the time
//!   until all N are durable.
//!
//! Run with `cargo bench -p latchkey-server --bench audit_append`. The figures depend on
//! the disk's fsync latency, so compare them only within one run on one machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use latchkey_core::audit::{AuditRecord, GENESIS_HASH, Outcome, format_time, seal_event};
use latchkey_server::audit_log::{AuditLog, CheckpointSettings};
use latchkey_server::keyring::Keyring;
use latchkey_store::{SqliteStore, Store};
use tokio::runtime::Runtime;

/// Builds the record that a typical allowed read leaves.
fn read_record(n: u64) -> AuditRecord {
    let mut detail = BTreeMap::new();
    detail.insert("field".to_string(), "password".to_string());
    detail.insert("version".to_string(), "1".to_string());
    AuditRecord {
        time: format_time(chrono::Utc::now()),
        request_id: format!("5f0c2a4e-0000-4000-8000-{n:012}"),
        principal: "User::\"bench\"".into(),
        action: "read".into(),
        resource: "Secret::\"bench/db\"".into(),
        outcome: Outcome::Allowed,
        reason: None,
        policies: vec!["bench-read#1".into()],
        client_addr: Some("127.0.0.1".into()),
        token_id: Some("tok_0123456789abcdef".into()),
        detail,
    }
}

fn store_batch(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime
        .block_on(SqliteStore::open(&dir.path().join("bench.db")))
        .unwrap();
    let mut head = (0u64, GENESIS_HASH);

    let mut group = c.benchmark_group("audit/store_batch");
    for size in [1u64, 64, 512] {
        group.throughput(Throughput::Elements(size));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| {
                let mut events = Vec::with_capacity(size as usize);
                let (mut seq, mut prev) = head;
                for _ in 0..size {
                    seq += 1;
                    let event = seal_event(seq, &prev, read_record(seq));
                    prev = hex::decode(&event.hash).unwrap().try_into().unwrap();
                    events.push(event);
                }
                runtime.block_on(store.append_audit(&events)).unwrap();
                head = (seq, prev);
            })
        });
    }
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("bench.db"))
                .await
                .unwrap(),
        );
        // A sealed keyring: the writer appends but never signs, so only appends are timed.
        let keyring = Keyring::default();
        AuditLog::start(store, keyring.root_cell(), CheckpointSettings::default())
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("audit/group_commit");
    for concurrent in [1u64, 64] {
        group.throughput(Throughput::Elements(concurrent));
        group.bench_with_input(
            BenchmarkId::from_parameter(concurrent),
            &concurrent,
            |b, &concurrent| {
                b.iter(|| {
                    runtime.block_on(async {
                        let appends = (0..concurrent).map(|n| {
                            let log = log.clone();
                            tokio::spawn(async move { log.append(read_record(n)).await })
                        });
                        for append in futures::future::join_all(appends).await {
                            append.unwrap().unwrap();
                        }
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, store_batch, group_commit);
criterion_main!(benches);

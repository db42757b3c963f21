//! The history store's own append rate: messages handed to the SQLite store and committed by
//! its writer thread (group commit), per second. Run with `cargo bench --bench store`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use machat::protocol::Timestamp;
use machat::settings::Retention;
use machat::store::{Batching, SqliteStore, Store, StoredMessage};

const MESSAGES: u64 = 10_000;

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(MESSAGES));
    group.sample_size(10);
    for sync in [false, true] {
        let name = if sync { "sqlite_sync" } else { "sqlite_batch" };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = std::env::temp_dir()
                        .join(format!("machat-bench-store-{}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&dir);
                    let retention = Retention {
                        max_messages: 100_000,
                        max_age: None,
                        max_total_bytes: 0,
                    };
                    let batching = Batching::for_durability(sync);
                    let store = SqliteStore::open(&dir, retention, batching, sync)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let room: std::sync::Arc<str> = "devroom".into();
                    let start = Instant::now();
                    for id in 1..=MESSAGES {
                        let msg = StoredMessage {
                            id,
                            name: "Mina".into(),
                            text: "a typical chat line of some sixty bytes, give or take".into(),
                            ts: Timestamp(1_790_000_000_000 + id),
                            action: false,
                        };
                        store.append(&room, &msg.as_ref(), None);
                    }
                    // Close waits for the writer to commit everything queued.
                    store.close();
                    total += start.elapsed();
                    let _ = std::fs::remove_dir_all(&dir);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);

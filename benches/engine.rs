//! Criterion benchmarks of the hot paths: chunking, sealing a chunk, and a whole backup
//! into the in-memory backend.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use coffer::backend::{Backend, MemoryBackend};
use coffer::{BackupOptions, Chunker, ChunkerParams, InitOptions, KdfParams, MasterKey, Repository};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn chunking(c: &mut Criterion) {
    let data = common::random_bytes(64 << 20, 1);
    let chunker = Chunker::new(&[7; 32], ChunkerParams::FILES);
    let mut group = c.benchmark_group("chunker");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("fastcdc 64 MiB", |b| b.iter(|| chunker.chunks(&data[..]).count()));
    group.finish();
}

fn sealing(c: &mut Criterion) {
    let master = MasterKey::generate();
    let random = common::random_bytes(1 << 20, 2);
    let text = "2026-11-22 patient 4711 blood pressure 120/80 heart rate 64\n".repeat(18_000);
    let mut group = c.benchmark_group("chunk");
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("blob id (keyed BLAKE3) 1 MiB", |b| b.iter(|| master.blob_id(&random)));
    group.bench_function("seal 1 MiB AES-256-GCM", |b| b.iter(|| master.seal(&random, b"blob")));
    group.bench_function("sha256 1 MiB", |b| b.iter(|| <sha2::Sha256 as sha2::Digest>::digest(&random)));
    group.bench_function("compress text 1 MiB zstd-3", |b| {
        b.iter(|| zstd::bulk::compress(&text.as_bytes()[..1 << 20], 3))
    });
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let source = tempfile::tempdir().unwrap();
    let mut total = 0;
    for index in 0..64u64 {
        let data = if index % 2 == 0 {
            common::random_bytes(1 << 20, index)
        } else {
            format!("line {index}\n").repeat(100_000).into_bytes()
        };
        total += data.len();
        std::fs::write(source.path().join(format!("file_{index}")), data).unwrap();
    }
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(10);
    group.bench_function("first backup into memory", |b| {
        b.iter_batched(
            || {
                let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
                let options = InitOptions { kdf: KdfParams::QUICK, ..Default::default() };
                Repository::init(backend, b"pw", &options, None).unwrap()
            },
            |repository| {
                coffer::backup(
                    &repository,
                    BackupOptions {
                        paths: vec![source.path().to_path_buf()],
                        stdin: None,
                        tags: vec![],
                        host: None,
                        ..Default::default()
                    },
                )
                .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, chunking, sealing, pipeline);
criterion_main!(benches);

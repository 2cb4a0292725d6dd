//! Criterion benchmarks of the hot paths: chunking, hashing, compressing and sealing a
//! chunk, a whole backup into the in-memory backend, and the restore write path (a
//! restore from the in-memory backend into a folder, with and without the final sync).
//! `cargo bench --bench engine -- NAME` runs one; each guards a primitive against
//! regressions (compare with `--save-baseline` / `--baseline`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use coffer::backend::{Backend, MemoryBackend};
use coffer::restorer::{self, RestoreOptions};
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
    group.bench_function("blake3 unkeyed 1 MiB", |b| b.iter(|| blake3::hash(&random)));
    for level in [1, 2, 3] {
        group.bench_function(format!("compress text 1 MiB zstd-{level}"), |b| {
            b.iter(|| zstd::bulk::compress(&text.as_bytes()[..1 << 20], level))
        });
    }
    let sealed = master.seal(&random, b"blob");
    group.bench_function("open 1 MiB AES-256-GCM", |b| b.iter(|| master.open(&sealed, b"blob").unwrap()));
    group.finish();
}

/// Sixty-four files of 1 MiB, half random and half text, in a new folder.
fn sample_tree() -> (tempfile::TempDir, usize) {
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
    (source, total)
}

fn new_repository() -> Repository {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let options = InitOptions { kdf: KdfParams::QUICK, ..Default::default() };
    Repository::init(backend, b"pw", &options, None).unwrap()
}

fn backup_options(path: &std::path::Path) -> BackupOptions {
    BackupOptions { paths: vec![path.to_path_buf()], stdin: None, tags: vec![], host: None, ..Default::default() }
}

/// The restore write path: plan, fetch, open, verify and write 64 MiB of files into
/// a new folder on the disk the benchmark runs on (the page cache, mostly), then sync.
fn restoring(c: &mut Criterion) {
    let (source, total) = sample_tree();
    let repository = new_repository();
    coffer::backup(&repository, backup_options(source.path())).unwrap();
    let (id, snapshot) = repository.find_snapshot("latest").unwrap();
    let manifest = repository.load_manifest(&id, &snapshot).unwrap();
    let targets = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("restore");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(10);
    for (name, no_sync) in [("64 MiB into a folder", false), ("64 MiB into a folder, no sync", true)] {
        let mut run = 0u64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    run += 1;
                    let target = targets.path().join(format!("{no_sync}-{run}"));
                    RestoreOptions { target, no_sync, ..Default::default() }
                },
                |options| {
                    let plan = restorer::plan(&repository, &manifest, &options).unwrap();
                    let report = restorer::execute(&repository, &plan, &options).unwrap();
                    assert!(report.failed.is_empty());
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let (source, total) = sample_tree();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(total as u64));
    group.sample_size(10);
    group.bench_function("first backup into memory", |b| {
        b.iter_batched(
            new_repository,
            |repository| coffer::backup(&repository, backup_options(source.path())).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, chunking, sealing, pipeline, restoring);
criterion_main!(benches);

//! Any changed byte of any pack is detected on restore, naming the damaged object.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use coffer::backend::{Backend, MemoryBackend};
use coffer::restorer::{self, RestoreOptions};
use coffer::{BackupOptions, InitOptions, KdfParams, Repository};

fn quick_init() -> InitOptions {
    InitOptions { kdf: KdfParams::QUICK, ..Default::default() }
}

/// Opens the repository afresh (no cache) and restores everything; Ok(()) only if every file came back.
fn restore_everything(backend: &Arc<MemoryBackend>, target: &std::path::Path) -> Result<(), String> {
    let dynamic: Arc<dyn Backend> = backend.clone();
    let repository = Repository::open(dynamic, b"pw", None).map_err(|e| e.to_string())?;
    let (id, snapshot) = repository.find_snapshot("latest").map_err(|e| e.to_string())?;
    let manifest = repository.load_manifest(&id, &snapshot).map_err(|e| e.to_string())?;
    let options = RestoreOptions { target: target.to_path_buf(), ..Default::default() };
    let plan = restorer::plan(&repository, &manifest, &options).map_err(|e| e.to_string())?;
    let report = restorer::execute(&repository, &plan, &options).map_err(|e| e.to_string())?;
    match report.failed.first() {
        None => Ok(()),
        Some(failure) => Err(format!("{}: {}", failure.path.display(), failure.reason)),
    }
}

#[test]
fn every_flipped_byte_of_every_pack_is_detected() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("records");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a.txt"), b"first patient").unwrap();
    std::fs::write(source.join("b.bin"), common::random_bytes(300, 9)).unwrap();
    let backend = Arc::new(MemoryBackend::new());
    let dynamic: Arc<dyn Backend> = backend.clone();
    let repository = Repository::init(dynamic, b"pw", &quick_init(), None).unwrap();
    coffer::backup(
        &repository,
        BackupOptions { paths: vec![source], stdin: None, tags: vec![], host: None, ..Default::default() },
    )
    .unwrap();
    drop(repository);
    restore_everything(&backend, &work.path().join("clean")).expect("an undamaged repository restores");
    let packs = backend.list("data/").unwrap();
    assert_eq!(packs.len(), 2, "expected one data and one metadata pack");
    let mut checked = 0;
    for pack in packs {
        let original = backend.get(&pack.key).unwrap();
        let name = pack.key.rsplit('/').next().unwrap().to_string();
        // Every byte of the small data pack; for the larger metadata pack, its first and
        // last 512 bytes (header, trailer, first blob) and every 13th byte between.
        let positions: Vec<usize> = (0..original.len())
            .filter(|&at| original.len() < 2048 || at < 512 || at + 512 >= original.len() || at % 13 == 0)
            .collect();
        for at in positions {
            let mut damaged = original.to_vec();
            damaged[at] ^= 0x20;
            backend.tamper(&pack.key, Bytes::from(damaged));
            let target = work.path().join(format!("t{checked}"));
            let result = restore_everything(&backend, &target);
            let error = result.expect_err(&format!("flipping byte {at} of {} went unnoticed", pack.key));
            assert!(error.contains(&name), "byte {at} of {}: error does not name the pack: {error}", pack.key);
            let _ = std::fs::remove_dir_all(&target);
            checked += 1;
        }
        backend.tamper(&pack.key, original);
    }
    assert!(checked > 300, "only {checked} positions checked");
}

#[test]
fn a_missing_pack_names_the_pack_and_the_files() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("records");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("scan.dcm"), common::random_bytes(50_000, 3)).unwrap();
    let backend = Arc::new(MemoryBackend::new());
    let dynamic: Arc<dyn Backend> = backend.clone();
    let repository = Repository::init(dynamic, b"pw", &quick_init(), Some(&work.path().join("cache"))).unwrap();
    let report = coffer::backup(
        &repository,
        BackupOptions { paths: vec![source], stdin: None, tags: vec![], host: None, ..Default::default() },
    )
    .unwrap();
    let manifest = repository.load_manifest(&report.id, &report.snapshot).unwrap();
    let biggest = backend.list("data/").unwrap().into_iter().max_by_key(|info| info.size).unwrap();
    backend.delete(&biggest.key).unwrap();
    let options = RestoreOptions { target: work.path().join("out"), ..Default::default() };
    let plan = restorer::plan(&repository, &manifest, &options).unwrap();
    let restored = restorer::execute(&repository, &plan, &options).unwrap();
    assert_eq!(restored.failed.len(), 1);
    let (path, reason) = (&restored.failed[0].path, &restored.failed[0].reason);
    assert_eq!(restored.failed[0].cause, restorer::FailureCause::Damage);
    assert!(path.ends_with("scan.dcm"));
    assert!(reason.contains(biggest.key.rsplit('/').next().unwrap()) && reason.contains("missing"), "{reason}");
}

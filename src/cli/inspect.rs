//! `diff`, `find` and `stats`.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use anyhow::Result;
use coffer::inspect::{self, Change};
use serde_json::{json, Value};

use super::args::{DiffArgs, FindArgs, StatsArgs};
use super::output::{self, note};
use super::{exit, fail, Cli};

fn path_json(path: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(path).into_owned();
    let hex = std::str::from_utf8(path).is_err().then(|| hex::encode(path));
    (text, hex)
}

pub fn diff(cli: &Cli, args: &DiffArgs) -> Result<i32> {
    let repository = super::open(cli)?;
    let (old_id, old) = repository.find_snapshot(&args.old)?;
    let (new_id, new) = repository.find_snapshot(&args.new)?;
    let old_manifest = repository.load_manifest(&old_id, &old)?;
    let new_manifest = repository.load_manifest(&new_id, &new)?;
    let under = match &args.path {
        Some(path) if path.as_bytes().starts_with(b"/") => path.as_bytes().to_vec(),
        Some(path) => [b"/", path.as_bytes()].concat(),
        None => b"/".to_vec(),
    };
    let base = if under.len() > 1 { under.strip_suffix(b"/").unwrap_or(&under) } else { &under[..] };
    if old_manifest.entry(base)?.is_none() && new_manifest.entry(base)?.is_none() {
        let shown = String::from_utf8_lossy(base);
        return Err(coffer::Error::NotFound {
            what: format!("path {shown} in snapshot {} or {}", old_id.short(), new_id.short()),
        }
        .into());
    }
    let entries = inspect::diff(&old_manifest, &new_manifest, &under, args.metadata)?;
    let count = |change: Change| entries.iter().filter(|e| e.change == change).count();
    let size_change: i64 =
        entries.iter().map(|e| e.new_size.unwrap_or(0) as i64 - e.old_size.unwrap_or(0) as i64).sum();
    if cli.json {
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                let (path, hex) = path_json(&e.path);
                let mut value = json!({"path": path, "change": e.change.name(), "kind": e.kind.name(),
                    "old_size": e.old_size, "new_size": e.new_size, "what": e.what});
                if let Some(hex) = hex {
                    value["path_hex"] = json!(hex);
                }
                value
            })
            .collect();
        output::json(&json!({"old_snapshot_id": old_id.to_hex(), "new_snapshot_id": new_id.to_hex(),
            "added": count(Change::Added), "removed": count(Change::Removed), "modified": count(Change::Modified),
            "size_change": size_change, "entries": list}));
        return Ok(exit::SUCCESS);
    }
    for entry in &entries {
        let sign = match entry.change {
            Change::Added => "+",
            Change::Removed => "-",
            Change::Modified => "M",
        };
        let size = match (entry.old_size, entry.new_size) {
            (Some(old), Some(new)) if old != new => format!(" ({} -> {})", output::size(old), output::size(new)),
            (_, Some(new)) if entry.kind == coffer::EntryKind::File => format!(" ({})", output::size(new)),
            (Some(old), None) if entry.kind == coffer::EntryKind::File => format!(" ({})", output::size(old)),
            _ => String::new(),
        };
        let what = if entry.what.is_empty() { String::new() } else { format!(" [{}]", entry.what.join(", ")) };
        output::line(&format!("{sign}  {}{size}{what}", output::path_text(&entry.path)));
    }
    note(
        cli.quiet,
        &format!(
            "{} added, {} removed, {} modified between {} ({}) and {} ({}); size change {}{}",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Modified),
            old_id.short(),
            output::short_time(&old),
            new_id.short(),
            output::short_time(&new),
            if size_change < 0 { "-" } else { "+" },
            output::size(size_change.unsigned_abs())
        ),
    );
    Ok(exit::SUCCESS)
}

pub fn find(cli: &Cli, args: &FindArgs) -> Result<i32> {
    let filter = super::commands::filter_of(&args.filter)?;
    let repository = super::open(cli)?;
    let (mut snapshots, damaged) = repository.list_snapshots()?;
    for error in &damaged {
        eprintln!("warning: {error} (not searched)");
    }
    snapshots.retain(|(_, snapshot)| {
        filter.matches(snapshot) && filter.at.is_none_or(|at| snapshot.timestamp().is_some_and(|time| time <= at))
    });
    if !filter.is_empty() {
        note(cli.quiet || cli.json, &format!("only snapshots with {}", filter.describe()));
    }
    // Matches are printed as they are found: a pattern may match millions of entries.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if cli.json {
        let _ = write!(
            out,
            "{{\"schema_version\":{},\"snapshots_searched\":{},\"matches\":[",
            output::SCHEMA_VERSION,
            snapshots.len()
        );
    }
    let mut first = true;
    let mut failed: Option<std::io::Error> = None;
    let count = inspect::find(&repository, &snapshots, &args.patterns, &mut |f| {
        let line = if cli.json {
            let (path, hex) = path_json(&f.path);
            let mut value = json!({"snapshot_id": f.snapshot.to_hex(), "time": f.time, "path": path,
                "kind": f.kind.name(), "size": f.size, "mtime": output::time_ns(f.mtime_ns),
                "sha256": f.sha256.map(hex::encode)});
            if let Some(hex) = hex {
                value["path_hex"] = json!(hex);
            }
            format!("{}{value}", if first { "" } else { "," })
        } else {
            let sha = f.sha256.map(|s| hex::encode(&s[..8])).unwrap_or_else(|| "-".repeat(16));
            format!(
                "{}  {:<19}  {:>10}  {}  {sha}  {}\n",
                f.snapshot.short(),
                f.time.replace('T', " ").chars().take(19).collect::<String>(),
                if f.kind == coffer::EntryKind::File { output::size(f.size) } else { f.kind.name().to_string() },
                output::time_ns(f.mtime_ns),
                output::path_text(&f.path)
            )
        };
        first = false;
        if failed.is_none() {
            failed = out.write_all(line.as_bytes()).err();
        }
    })?;
    let finished = if cli.json { writeln!(out, "]}}") } else { Ok(()) };
    // A closed pipe (`coffer find ... | head`) ends the listing quietly, as `line` does.
    if failed.or(finished.err()).or(out.flush().err()).is_some() {
        std::process::exit(exit::SUCCESS);
    }
    note(cli.quiet || cli.json, &format!("{count} match(es) in {} snapshot(s) searched", snapshots.len()));
    Ok(if count == 0 { exit::NOT_FOUND } else { exit::SUCCESS })
}

pub fn stats(cli: &Cli, args: &StatsArgs) -> Result<i32> {
    let filter = super::commands::filter_of(&args.filter)?;
    let repository = super::open(cli)?;
    let snapshots = match &args.snapshot {
        Some(spec) => vec![repository.find_snapshot_filtered(spec, &filter)?],
        None => {
            let (mut all, damaged) = repository.list_snapshots()?;
            for error in &damaged {
                eprintln!("warning: {error} (not counted)");
            }
            all.retain(|(_, snapshot)| filter.matches(snapshot));
            all
        }
    };
    let whole = args.snapshot.is_none() && filter.is_empty();
    let stats = inspect::stats(&repository, &snapshots, whole)?;
    if cli.json {
        output::json(&json!({
            "snapshot_id": args.snapshot.as_ref().and(snapshots.first()).map(|(id, _)| id.to_hex()),
            "snapshot_count": stats.snapshots, "files": stats.files, "dirs": stats.dirs,
            "logical_bytes": stats.logical_bytes, "blob_count": stats.blobs, "unique_bytes": stats.unique_bytes,
            "stored_bytes": stats.stored_bytes, "pack_bytes": stats.pack_bytes,
            "dedup_ratio": stats.dedup_ratio(), "compression_ratio": stats.compression_ratio(),
        }));
        return Ok(exit::SUCCESS);
    }
    let what = match (&args.snapshot, snapshots.first()) {
        (Some(_), Some((id, snapshot))) => format!("snapshot {} ({})", id.short(), output::short_time(snapshot)),
        _ if whole => format!("repository ({} snapshots)", stats.snapshots),
        _ => format!("{} snapshots with {}", stats.snapshots, filter.describe()),
    };
    output::line(&what);
    output::line(&format!("  files                {:>12}  ({} folders)", stats.files, stats.dirs));
    output::line(&format!("  logical size         {:>12}", output::size(stats.logical_bytes)));
    output::line(&format!(
        "  after deduplication  {:>12}  ({} blobs; {:.2}x)",
        output::size(stats.unique_bytes),
        stats.blobs,
        stats.dedup_ratio()
    ));
    output::line(&format!(
        "  stored               {:>12}  (compressed and encrypted; {:.2}x)",
        output::size(stats.stored_bytes),
        stats.compression_ratio()
    ));
    if let Some(packs) = stats.pack_bytes {
        output::line(&format!(
            "  packs                {:>12}  (including data no snapshot needs)",
            output::size(packs)
        ));
    }
    Ok(exit::SUCCESS)
}

/// `cat KIND [ID]`: one object as JSON, opened with the key. Nothing is written, and
/// no data leaves the repository (file content is never printed), so it is not audited.
pub fn cat(cli: &Cli, kind: &str, id: Option<&str>) -> Result<i32> {
    let repository = super::open(cli)?;
    let backend = repository.backend();
    let need_id = || match id {
        Some(id) if !id.is_empty() => Ok(id),
        _ => fail(exit::USAGE, format!("cat {kind} needs an id (or a unique prefix of one)")),
    };
    let unique = |ids: Vec<String>, prefix: &str| -> Result<String> {
        let prefix = prefix.to_ascii_lowercase();
        let found: Vec<String> = ids.into_iter().filter(|id| id.starts_with(&prefix)).collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => fail(exit::NOT_FOUND, format!("no {kind} {prefix:?} in the repository")),
            _ => fail(exit::USAGE, format!("{kind} id {prefix:?} matches {} objects; give more of it", found.len())),
        }
    };
    if kind == "config" && id.is_some() {
        return fail(exit::USAGE, "cat config takes no id");
    }
    let value: serde_json::Value = match kind {
        "config" => serde_json::to_value(repository.config())?,
        "key" => {
            let id = repository.find_key_id(need_id()?)?;
            let bytes = backend.get(&coffer::objects::Kind::Key.key(&id))?;
            serde_json::from_slice(&bytes)
                .or_else(|e| fail(exit::DAMAGED, format!("key {} is not JSON: {e}", id.short())))?
        }
        "snapshot" => {
            let (id, snapshot) = repository.find_snapshot(need_id()?)?;
            json!({"snapshot_id": id.to_hex(), "snapshot": snapshot})
        }
        "restore" => {
            let (id, record) = repository.find_restore(need_id()?)?;
            json!({"restore_id": id.to_hex(), "restore": record})
        }
        "index" => {
            let ids = repository.index_object_ids()?.iter().map(|id| id.to_hex()).collect();
            let id: coffer::IndexId = unique(ids, need_id()?)?.parse()?;
            let file = repository.load_index(&id)?;
            let packs: Vec<_> = file
                .packs
                .iter()
                .map(|pack| {
                    let blobs: Vec<_> = pack
                        .blobs
                        .iter()
                        .map(|blob| {
                            json!({"id": blob.id.to_hex(), "type": format!("{:?}", blob.blob_type).to_lowercase(),
                            "offset": blob.offset, "length": blob.length, "raw_length": blob.raw_length})
                        })
                        .collect();
                    json!({"id": pack.id.to_hex(), "size": pack.size, "blobs": blobs})
                })
                .collect();
            let supersedes: Vec<String> = file.supersedes.iter().map(|id| id.to_hex()).collect();
            json!({"id": id.to_hex(), "supersedes": supersedes, "packs": packs})
        }
        "lock" => {
            let locks = coffer::list_locks(&**backend, repository.master())?;
            let id = unique(locks.iter().map(|(id, _)| id.to_hex()).collect(), need_id()?)?;
            let record = locks.into_iter().find(|(lock, _)| lock.to_hex() == id).and_then(|(_, record)| record);
            json!({"id": id, "lock": record})
        }
        "audit" => {
            let seq: u64 =
                need_id()?.parse().or_else(|_| fail(exit::USAGE, "an audit record is named by its number"))?;
            let stored = match coffer::audit::read(&**backend, repository.master(), coffer::audit::Sequence(seq)) {
                Err(coffer::Error::MissingObject { .. }) => {
                    return fail(exit::NOT_FOUND, format!("there is no audit record {seq}"))
                }
                other => other?,
            };
            json!({"seq": seq, "hash": stored.hash, "record": stored.record})
        }
        _ => return fail(exit::USAGE, format!("cannot cat {kind:?}")),
    };
    output::line(&serde_json::to_string_pretty(&value)?);
    Ok(exit::SUCCESS)
}

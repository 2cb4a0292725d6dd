//! Formatting for people and for scripts.

use std::io::Write;

use coffer::{Entry, EntryKind, Snapshot, SnapshotId};
use serde_json::{json, Value};

/// Writes one line to stdout; a closed pipe ends the program quietly.
pub fn line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}").is_err() {
        std::process::exit(0);
    }
}

/// Writes bytes to stdout as they are (a completion script, a man page); a closed pipe
/// ends the program quietly.
pub fn raw(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(bytes).and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Whether a command's JSON document was written: a failure after it (check's report
/// of damage, exit 13) is then told by that document and the exit code alone.
static DOCUMENT_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The version of the JSON vocabulary (docs/JSON.md): every document and progress line
/// carries it as `schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

/// Writes a JSON document to stdout, with `schema_version`.
pub fn json(value: &Value) {
    DOCUMENT_WRITTEN.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        map.insert("schema_version".into(), json!(SCHEMA_VERSION));
    }
    line(&value.to_string());
}

/// A snapshot summary for JSON: its count of warnings is `warning_count` (`warnings`
/// is always a list of sentences).
pub fn summary_json(summary: &coffer::Summary) -> Value {
    let mut value = serde_json::to_value(summary).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        if let Some(count) = map.remove("warnings") {
            map.insert("warning_count".into(), count);
        }
    }
    value
}

/// Marks stdout as carrying the command's own bytes (a file, a tar stream): a failure
/// then adds no JSON error document to them.
pub fn binary_started() {
    DOCUMENT_WRITTEN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// True once [`json`] wrote the command's document.
pub fn document_written() -> bool {
    DOCUMENT_WRITTEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes a message for a person to stderr, unless quiet.
pub fn note(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("{text}");
    }
}

/// 1536 -> "1.5 KiB".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Nanoseconds since the epoch as RFC 3339 UTC.
pub fn time_ns(nanoseconds: i64) -> String {
    jiff::Timestamp::from_nanosecond(nanoseconds as i128)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| nanoseconds.to_string())
}

/// A snapshot's time as local-looking "YYYY-MM-DD HH:MM:SS" (UTC).
pub fn short_time(snapshot: &Snapshot) -> String {
    snapshot.timestamp().map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| snapshot.time.clone())
}

pub fn snapshot_json(id: &SnapshotId, snapshot: &Snapshot) -> Value {
    let mut value = serde_json::to_value(snapshot).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("snapshot_id".into(), json!(id.to_hex()));
        map.insert("short_id".into(), json!(id.short()));
        map.insert("summary".into(), summary_json(&snapshot.summary));
    }
    value
}

/// "drwxr-xr-x" style mode.
pub fn mode_string(kind: EntryKind, mode: u32) -> String {
    let kind_char = match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Fifo => 'p',
        EntryKind::CharDevice => 'c',
        EntryKind::BlockDevice => 'b',
        EntryKind::Socket => 's',
        EntryKind::File => '-',
    };
    let mut text = String::from(kind_char);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// Path bytes for display; not-UTF-8 bytes are escaped.
pub fn path_text(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(text) => text.escape_debug().to_string(),
        Err(_) => path.escape_ascii().to_string(),
    }
}

pub fn entry_json(entry: &Entry) -> Value {
    let mut value = json!({
        "path": String::from_utf8_lossy(&entry.path),
        "kind": entry.kind.name(),
        "mode": format!("{:04o}", entry.mode),
        "uid": entry.uid,
        "gid": entry.gid,
        "user": entry.user,
        "group": entry.group,
        "size": entry.size,
        "mtime": time_ns(entry.mtime_ns),
        "inode": entry.inode,
        "sha256": entry.sha256.map(hex::encode),
        "link_target": entry.link_target.as_ref().map(|t| String::from_utf8_lossy(t).into_owned()),
    });
    if std::str::from_utf8(&entry.path).is_err() {
        value["path_hex"] = json!(hex::encode(&entry.path));
    }
    if let Some(target) = entry.link_target.as_ref().filter(|target| std::str::from_utf8(target).is_err()) {
        value["link_target_hex"] = json!(hex::encode(target));
    }
    value
}

pub fn entry_long(entry: &Entry) -> String {
    let user = entry.user.clone().unwrap_or_else(|| entry.uid.to_string());
    let group = entry.group.clone().unwrap_or_else(|| entry.gid.to_string());
    let mut text = format!(
        "{} {user:>8} {group:>8} {:>12} {} {}",
        mode_string(entry.kind, entry.mode),
        entry.size,
        time_ns(entry.mtime_ns),
        path_text(&entry.path)
    );
    if let Some(target) = &entry.link_target {
        text.push_str(" -> ");
        text.push_str(&path_text(target));
    }
    text
}

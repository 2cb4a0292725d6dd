//! A backup's progress: a one-line bar on stderr redrawn about five times a second when
//! stderr is a terminal, or with `--json` one JSON object per line on stdout every
//! second (and a last one at the end), before the summary document, which is the last
//! line (the CLI contract: JSON lines for progress on stdout, as restic does). Nothing
//! otherwise, so cron mails stay small.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use coffer::{Progress, ProgressSnapshot};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Value};

use super::output;
use super::Cli;

const BAR_INTERVAL: Duration = Duration::from_millis(200);
const JSON_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Bar,
    Json,
}

/// The thread that reports progress. [`Reporter::finish`] stops it after a last report
/// of the final counts; dropping it (a failed backup) stops it with the bar cleared and
/// no last JSON line.
pub struct Reporter {
    progress: Arc<Progress>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting, unless progress is turned off (`-q`, `--no-progress`) or
    /// stderr is not a terminal and there is no `--json`.
    pub fn start(cli: &Cli, turned_off: bool) -> Option<Reporter> {
        Self::start_counting(cli, turned_off, "files")
    }

    /// The same, counting `unit` (`packs` for check) instead of files.
    pub fn start_counting(cli: &Cli, turned_off: bool, unit: &'static str) -> Option<Reporter> {
        let style = match (cli.json, std::io::stderr().is_terminal()) {
            _ if turned_off || cli.quiet => return None,
            (true, _) => Style::Json,
            (false, true) => Style::Bar,
            (false, false) => return None,
        };
        let progress = Arc::new(Progress::new());
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let shared = progress.clone();
        let thread = std::thread::spawn(move || report(&shared, style, unit, &stopped));
        Some(Reporter { progress, stop: Some(stop), thread: Some(thread) })
    }

    /// The counters the backup updates.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Reports the final counts and stops.
    pub fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn report(progress: &Progress, style: Style, unit: &'static str, stopped: &Receiver<()>) {
    let interval = match style {
        Style::Bar => BAR_INTERVAL,
        Style::Json => JSON_INTERVAL,
    };
    if style == Style::Bar {
        draw_bar(progress, unit);
    }
    let finished = loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) => break true,
            Err(RecvTimeoutError::Disconnected) => break false,
        }
        match style {
            Style::Bar => draw_bar(progress, unit),
            Style::Json => super::output::line(&json_line(&progress.snapshot(), unit).to_string()),
        }
    };
    match style {
        Style::Bar => write_stderr_raw("\r\x1b[K"),
        Style::Json if finished => super::output::line(&json_line(&progress.snapshot(), unit).to_string()),
        Style::Json => {}
    }
}

fn draw_bar(progress: &Progress, unit: &str) {
    let width = terminal_size::terminal_size_of(std::io::stderr()).map_or(80, |(width, _)| width.0 as usize);
    let line = bar_line(&progress.snapshot(), &progress.current_path(), unit, width.saturating_sub(1));
    write_stderr_raw(&format!("\r{line}\x1b[K"));
}

/// Progress is best effort: a stderr that cannot be written is no reason to stop.
fn write_stderr_raw(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

/// `{"type":"progress",...}`: the counters, elapsed time and ETA in seconds; `unit`
/// says what `files_*` count when it is not files (`packs` for check).
fn json_line(now: &ProgressSnapshot, unit: &str) -> Value {
    let mut line = json!({
        "type": "progress",
        "files_done": now.files_done,
        "files_total": now.files_total,
        "bytes_done": now.bytes_done,
        "bytes_total": now.bytes_total,
        "bytes_read": now.bytes_read,
        "scan_finished": now.scan_finished,
        "elapsed_seconds": (now.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "eta_seconds": now.eta().map(|eta| eta.as_secs_f64().round() as u64),
        "schema_version": output::SCHEMA_VERSION,
    });
    if unit != "files" {
        line["unit"] = json!(unit);
    }
    line
}

/// `[0:12] 1204/5311 files, 1.2 GiB/4.0 GiB 30%, 98.0 MiB/s, ETA 0:28  /data/...`, at
/// most `width` characters; totals carry a `+` while the scan is still counting.
fn bar_line(now: &ProgressSnapshot, current: &Path, unit: &str, width: usize) -> String {
    let more = if now.scan_finished { "" } else { "+" };
    let mut line = format!(
        "[{}] {}/{}{more} {unit}, {}/{}{more}",
        clock(now.elapsed),
        now.files_done,
        now.files_total,
        output::size(now.bytes_done),
        output::size(now.bytes_total),
    );
    if let (Some(percent), true) = (now.percent(), now.scan_finished) {
        line.push_str(&format!(" {percent:.0}%"));
    }
    line.push_str(&format!(", {}/s", output::size(now.rate() as u64)));
    if let Some(eta) = now.eta() {
        line.push_str(&format!(", ETA {}", clock(eta)));
    }
    let path = output::path_text(current.as_os_str().as_encoded_bytes());
    let room = width.saturating_sub(line.chars().count() + 2);
    if !path.is_empty() && room > 3 {
        line.push_str("  ");
        line.push_str(&tail(&path, room));
    }
    line.chars().take(width).collect()
}

/// The end of `text` in at most `room` characters, marked with `…` when shortened.
fn tail(text: &str, room: usize) -> String {
    let count = text.chars().count();
    if count <= room {
        return text.to_string();
    }
    let kept: String = text.chars().skip(count - (room - 1)).collect();
    format!("…{kept}")
}

/// 75 s -> "1:15", 3675 s -> "1:01:15".
fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{seconds:02}")
    } else {
        format!("{minutes}:{seconds:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(scan_finished: bool) -> ProgressSnapshot {
        ProgressSnapshot {
            files_total: 5311,
            bytes_total: 4 << 30,
            scan_finished,
            files_done: 1204,
            bytes_done: 1 << 30,
            bytes_read: 1 << 29,
            elapsed: Duration::from_secs(12),
        }
    }

    #[test]
    fn the_bar_shows_counts_rate_eta_and_the_end_of_the_path() {
        let line = bar_line(&sample(true), Path::new("/data/studies/study_001/scan.dcm"), "files", 200);
        assert_eq!(
            line,
            "[0:12] 1204/5311 files, 1.0 GiB/4.0 GiB 25%, 85.3 MiB/s, ETA 0:36  /data/studies/study_001/scan.dcm"
        );
        let counting = bar_line(&sample(false), Path::new(""), "files", 200);
        assert_eq!(counting, "[0:12] 1204/5311+ files, 1.0 GiB/4.0 GiB+, 85.3 MiB/s");
        let narrow = bar_line(&sample(true), Path::new("/data/studies/study_001/scan.dcm"), "files", 80);
        assert_eq!(narrow.chars().count(), 80);
        assert!(narrow.ends_with(", ETA 0:36  …001/scan.dcm"), "{narrow}");
        assert_eq!(bar_line(&sample(true), Path::new("/x"), "files", 20).chars().count(), 20);
    }

    #[test]
    fn json_lines_carry_the_counters() {
        let value = json_line(&sample(true), "files");
        assert_eq!(value["type"], "progress");
        assert_eq!(value["files_done"], 1204);
        assert_eq!(value["bytes_total"], 4u64 << 30);
        assert_eq!(value["eta_seconds"], 36);
        assert_eq!(json_line(&sample(false), "files")["eta_seconds"], Value::Null);
        assert_eq!(json_line(&sample(true), "packs")["unit"], "packs");
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(Duration::from_secs(75)), "1:15");
        assert_eq!(clock(Duration::from_secs(3675)), "1:01:15");
    }
}

//! `--stdin-from-command`: a program run with `sh -c` whose standard output is stored
//! as one file, and whose failure fails the backup before anything is committed. Piped
//! into `coffer backup --stdin`, a failing program leaves coffer only an early end of
//! input, indistinguishable from a short dump.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use super::{BlobSender, Walker};
use crate::error::{Error, Result};

/// A program whose output becomes a file of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputCommand {
    /// Run with `sh -c`. Never shown in messages or stored: it may hold a secret.
    pub command: String,
    /// The file's name in the snapshot, as with `--stdin-name`.
    pub name: String,
}

/// Lines of the program's stderr kept for messages, and the most of each line kept.
const STDERR_LINES: usize = 20;
const STDERR_LINE_CHARS: usize = 300;
/// Lines quoted when the program fails.
const FAILURE_LINES: usize = 3;

/// The running program: its output is read by the caller, its stderr by a thread.
struct Running {
    child: Child,
    stderr: Option<JoinHandle<Vec<String>>>,
}

impl Running {
    fn start(command: &str) -> Result<Self> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::InputCommand { message: format!("could not be started with sh: {e}") })?;
        let stderr = child.stderr.take().map(|pipe| std::thread::spawn(move || last_lines(pipe)));
        Ok(Self { child, stderr })
    }

    fn stdout(&mut self) -> Result<ChildStdout> {
        self.child.stdout.take().ok_or_else(|| Error::InputCommand { message: "has no output pipe".into() })
    }

    /// Waits for the program; returns the last lines of its stderr, or the failure.
    fn finish(mut self) -> Result<Vec<String>> {
        let status =
            self.child.wait().map_err(|e| Error::InputCommand { message: format!("cannot be waited for: {e}") })?;
        let lines = self.stderr.take().and_then(|handle| handle.join().ok()).unwrap_or_default();
        if status.success() {
            return Ok(lines);
        }
        let said = match &lines[lines.len().saturating_sub(FAILURE_LINES)..] {
            [] => "it printed nothing on stderr".to_string(),
            last => last.join(" / "),
        };
        Err(Error::InputCommand { message: format!("{}: {said}", how_it_ended(status)) })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// "exited with status 3" or "was killed by signal 9".
fn how_it_ended(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// The last non-empty lines a pipe carries, each cut to a bounded length (by
/// characters, never inside one), so a chatty program cannot fill memory.
fn last_lines(pipe: ChildStderr) -> Vec<String> {
    let mut lines = VecDeque::with_capacity(STDERR_LINES);
    for line in BufReader::new(pipe).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if lines.len() == STDERR_LINES {
            lines.pop_front();
        }
        lines.push_back(text.chars().take(STDERR_LINE_CHARS).collect());
    }
    lines.into()
}

impl Walker<'_, '_> {
    /// Runs the program and stores its output as `/NAME`. If it fails, the error (with
    /// its exit status and the last lines of its stderr) aborts the backup; what it
    /// printed on stderr when it succeeds becomes a note.
    pub(super) fn add_command_output(
        &mut self,
        input: &InputCommand,
        time: jiff::Timestamp,
        sender: &BlobSender<'_>,
    ) -> Result<()> {
        let path = self.stdin_path(&input.name)?;
        let mut running = Running::start(&input.command)?;
        let output = running.stdout()?;
        let chunker = self.packer.repository().file_chunker();
        let (size, _) = self.add_stream(output, &path, "the input command's output", &chunker, time, sender)?;
        let said = running.finish()?;
        if let [.., last] = said.as_slice() {
            self.notes.push(format!("the input command succeeded; the last line it printed on stderr: {last}"));
        }
        self.warn_if_empty(size, "the input command's output", &path);
        Ok(())
    }
}

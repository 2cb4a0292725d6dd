//! The `coffer` command: parses flags, runs the command, maps failures to exit codes.

mod cli;

use clap::Parser;

fn main() {
    bound_heap_growth();
    // Before any thread starts, and before anything that could start a child process.
    let secrets = cli::password::EnvSecrets::take();
    let parsed = match cli::Cli::try_parse() {
        Ok(parsed) => with_profile(secrets.apply(parsed)),
        Err(error) => {
            let code = if error.use_stderr() { cli::exit::USAGE } else { cli::exit::SUCCESS };
            let _ = error.print();
            if code != cli::exit::SUCCESS && std::env::args_os().any(|arg| arg == "--json") {
                // The sentence and what it lists (the missing arguments), not the usage.
                let text = error.to_string();
                let lines: Vec<&str> = text.lines().take_while(|line| !line.trim().is_empty()).map(str::trim).collect();
                json_error(lines.join(" ").trim_start_matches("error: "), code);
            }
            std::process::exit(code);
        }
    };
    let json = parsed.json;
    coffer::interrupt::install();
    // Private by default: repository objects, cache files and temporary files hold
    // private data (paths, owners, checksums, database content). Restored entries get
    // their recorded modes explicitly, so they are not affected.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let outcome = cli::run(parsed);
    // What storage had to give up on beside the outcome (an upload it could not
    // abort), never instead of it.
    for note in coffer::backend::take_notes() {
        eprintln!("note: {note}");
    }
    let code = match outcome {
        Ok(code) => code,
        // The reader of stdout went away (`| head`): a quiet end, as for a listing.
        Err(error) if closed_pipe(&error) => 0,
        Err(error) => {
            let (text, code) = (message(&error), exit_code(&error));
            eprintln!("coffer: {text}");
            if json && !cli::output_document_written() {
                json_error(&text, code);
            }
            code
        }
    };
    cli::profile::remove_temporary_files();
    std::process::exit(code);
}

/// Fills in what `--profile` says; a profile that cannot be read ends the program here,
/// before any thread starts (applying it may set storage variables in the environment).
fn with_profile(mut parsed: cli::Cli) -> cli::Cli {
    match cli::profile::apply(&mut parsed) {
        Ok(profile) => {
            parsed.loaded_profile = profile;
            parsed
        }
        Err(error) => {
            let (text, code) = (message(&error), exit_code(&error));
            eprintln!("coffer: {text}");
            if parsed.json {
                json_error(&text, code);
            }
            cli::profile::remove_temporary_files();
            std::process::exit(code);
        }
    }
}

/// With `--json`, a failure is also one JSON document on stdout (after progress lines),
/// unless the command wrote its own document first: `{"error": {"kind", "message",
/// "exit_code"}}`.
fn json_error(message: &str, code: i32) {
    use std::io::Write;
    let error = serde_json::json!({"error": {"kind": cli::exit::kind(code), "message": message, "exit_code": code},
        "schema_version": 1});
    // Best effort: stdout may be closed, and the exit code says it all anyway.
    let _ = writeln!(std::io::stdout(), "{error}");
}

/// True for a write to standard output whose reader has gone (EPIPE); never for any
/// other pipe (pg_restore's input, say), whose end is a real failure.
fn closed_pipe(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<coffer::Error>(),
        Some(coffer::Error::Io { path, source, .. })
            if path.as_os_str() == "standard output" && source.kind() == std::io::ErrorKind::BrokenPipe
    )
}

/// glibc raises its mmap threshold each time a large buffer is freed, after which
/// buffers of packs (16 to 64 MiB) come from per-thread arenas that keep the memory:
/// `check --read-data --jobs 4` peaked at 240 MB instead of 135 MB. A fixed threshold
/// keeps every pack-sized buffer in its own mapping, returned when freed. It stays
/// above the chunk sizes: at 1 MiB, every chunk buffer was a fresh mapping, and a
/// first backup of 1 GiB took 1.7 million page faults and 5 s of system time.
///
/// Chunk-sized buffers come from the arenas, which by default hand any free space
/// above 128 KiB back to the kernel, so the next chunk faulted its pages in again: a
/// first backup of 1 GiB still took 330,000 page faults. Keeping up to 16 MiB free per
/// arena, in at most two arenas (one per core of the machines this is measured on),
/// took that to 50,000 and the backup from 7.4 s to 5.7 s, and a restore of the same
/// gigabyte from 1.9 s to 1.1 s at 10% less peak memory.
fn bound_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 12 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn message(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn exit_code(error: &anyhow::Error) -> i32 {
    if let Some(exit) = error.downcast_ref::<cli::ExitError>() {
        return exit.code;
    }
    if let Some(error) = error.chain().find_map(|cause| cause.downcast_ref::<coffer::Error>()) {
        return cli::exit::code_of(error);
    }
    cli::exit::FAILURE
}

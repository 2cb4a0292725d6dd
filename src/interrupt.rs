//! Interrupt requests: SIGINT and SIGTERM set a flag that long operations poll, so a
//! backup can index what it finished and a restore can remove its temporary files
//! before the process exits.

use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, Result};

/// The signal received, or 0.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(signal: libc::c_int) {
    // A second signal while the first is being handled ends the process at once: the
    // user asked twice. Only async-signal-safe calls here.
    if RECEIVED.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Routes SIGINT and SIGTERM to the flag. Call once, early, from the program's main.
pub fn install() {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(record),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit.
        let _ = unsafe { nix::sys::signal::sigaction(signal, &action) };
    }
}

/// The signal number if an interrupt was requested.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Fails with `Error::Interrupted` if an interrupt was requested.
pub fn check() -> Result<()> {
    match requested() {
        Some(signal) => Err(Error::Interrupted { signal, outcome: String::new() }),
        None => Ok(()),
    }
}

/// Makes the flag look set, for tests of what an interrupt leaves behind.
#[doc(hidden)]
pub fn simulate(signal: i32) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Clears a simulated interrupt.
#[doc(hidden)]
pub fn reset() {
    RECEIVED.store(0, Ordering::SeqCst);
}

//! Maintenance of a repository: verify it (check), drop snapshots by policy (forget),
//! delete and repack what nothing uses (prune), rebuild after damage (repair), and look
//! into snapshots without restoring them (inspect: diff, find, stats).

pub mod check;
pub mod forget;
pub mod inspect;
pub mod prune;
pub mod repair;

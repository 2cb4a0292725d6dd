//! Maintenance of a repository: verify it (check), drop snapshots by policy (forget),
//! delete and repack what nothing uses (prune), and rebuild after damage (repair).

pub mod check;
pub mod forget;
pub mod prune;
pub mod repair;

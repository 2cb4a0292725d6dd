//! The pipelines that move data in and out of a repository: backup (the archiver),
//! restore, PostgreSQL dumps and restores, and the progress counters they share.

pub mod archiver;
pub(crate) mod patterns;
pub mod pg;
pub mod progress;
pub mod restorer;
pub mod tarball;
pub mod ziparchive;

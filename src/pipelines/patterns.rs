//! Include and exclude patterns (globs) of backup and restore. `*` and `?` stay within
//! one name; `**` crosses folders; a pattern without `/` matches a name at any depth.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

fn glob(pattern: &str, text: &str) -> Result<globset::Glob> {
    GlobBuilder::new(text)
        .literal_separator(true)
        .build()
        .map_err(|e| Error::InvalidInput(format!("pattern {pattern:?} is not a valid glob: {e}")))
}

fn full(pattern: &str) -> String {
    if pattern.contains('/') {
        pattern.to_string()
    } else {
        format!("**/{pattern}")
    }
}

/// Compiles patterns matched against absolute paths (backup excludes).
pub(crate) fn glob_set(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(glob(pattern, &full(pattern))?);
    }
    builder.build().map(Some).map_err(|e| Error::InvalidInput(format!("patterns cannot be compiled: {e}")))
}

/// Patterns of a restore: those starting with `/` match snapshot paths, the others
/// paths below the folder being restored (`SNAP:PATH`, or `/`). Which patterns matched
/// anything is remembered, so that a pattern that matched nothing can be reported.
pub(crate) struct RestorePatterns {
    texts: Vec<String>,
    absolute: GlobSet,
    absolute_of: Vec<usize>,
    relative: GlobSet,
    relative_of: Vec<usize>,
    matched: Vec<AtomicBool>,
}

impl RestorePatterns {
    pub fn new(patterns: &[String]) -> Result<Option<Self>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let (mut absolute, mut relative) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let (mut absolute_of, mut relative_of) = (Vec::new(), Vec::new());
        for (index, pattern) in patterns.iter().enumerate() {
            if pattern.starts_with('/') {
                absolute.add(glob(pattern, pattern)?);
                absolute_of.push(index);
            } else {
                relative.add(glob(pattern, &full(pattern))?);
                relative_of.push(index);
            }
        }
        let build = |builder: GlobSetBuilder| {
            builder.build().map_err(|e| Error::InvalidInput(format!("patterns cannot be compiled: {e}")))
        };
        Ok(Some(Self {
            texts: patterns.to_vec(),
            absolute: build(absolute)?,
            absolute_of,
            relative: build(relative)?,
            relative_of,
            matched: patterns.iter().map(|_| AtomicBool::new(false)).collect(),
        }))
    }

    /// True if the entry, or a folder above it, matches: `absolute` is its snapshot
    /// path, `relative` its path below the restored folder.
    pub fn matches(&self, absolute: &[u8], relative: &[u8]) -> bool {
        let mut found = false;
        for ancestor in Path::new(OsStr::from_bytes(absolute)).ancestors().filter(|a| *a != Path::new("/")) {
            for index in self.absolute.matches(ancestor) {
                self.matched[self.absolute_of[index]].store(true, Ordering::Relaxed);
                found = true;
            }
        }
        for ancestor in Path::new(OsStr::from_bytes(relative)).ancestors().filter(|a| !a.as_os_str().is_empty()) {
            for index in self.relative.matches(ancestor) {
                self.matched[self.relative_of[index]].store(true, Ordering::Relaxed);
                found = true;
            }
        }
        found
    }

    /// True if the entry itself matches (not only a folder above it): what `find` wants.
    pub fn matches_itself(&self, absolute: &[u8], relative: &[u8]) -> bool {
        let absolute = Path::new(OsStr::from_bytes(absolute));
        let relative = Path::new(OsStr::from_bytes(relative));
        self.absolute.is_match(absolute) || (!relative.as_os_str().is_empty() && self.relative.is_match(relative))
    }

    /// The patterns that matched nothing so far.
    pub fn unmatched(&self) -> Vec<&str> {
        let unmatched = self.matched.iter().zip(&self.texts).filter(|(matched, _)| !matched.load(Ordering::Relaxed));
        unmatched.map(|(_, text)| text.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_patterns_match_below_the_restored_folder_and_stars_stay_in_one_name() {
        let patterns = ["d1/sparse".to_string(), "/data/src/*".to_string(), "*.tmp".to_string()];
        let set = RestorePatterns::new(&patterns).unwrap().unwrap();
        assert!(set.matches(b"/data/src/d1/sparse", b"d1/sparse"));
        assert!(set.matches(b"/data/src/d1/sparse/inner", b"d1/sparse/inner"), "below a match");
        assert!(set.matches(b"/data/src/top", b"top"));
        assert!(!set.matches(b"/data/src/d1/d2/deep", b"d1/d2/deep") || set.matches(b"/data/src/d1", b"d1"));
        assert!(set.matches(b"/x/y/a.tmp", b"y/a.tmp"));
        assert!(set.unmatched().is_empty());
        let unused = RestorePatterns::new(&["nothing/here".to_string()]).unwrap().unwrap();
        assert!(!unused.matches(b"/a/b", b"b"));
        assert_eq!(unused.unmatched(), vec!["nothing/here"]);
        let star = glob_set(&["/home/*".to_string()]).unwrap().unwrap();
        assert!(star.is_match("/home/alice") && !star.is_match("/home/alice/notes"));
    }
}

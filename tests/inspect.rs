//! `diff` and `find` agree with a brute-force comparison of restored trees, over a
//! generated tree changed at random between snapshots; `stats` adds up.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::{random_bytes, stat_walk, Fixture};

/// A deterministic pseudo-random number stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn make_tree(root: &Path, files: usize, rng: &mut Rng) {
    for n in 0..files {
        let folder = root.join(format!("d{:02}/e{}", n % 23, n % 5));
        std::fs::create_dir_all(&folder).unwrap();
        let extension = ["dat", "txt", "dcm"][n % 3];
        std::fs::write(folder.join(format!("f{n:05}.{extension}")), random_bytes(rng.below(3000) as usize, n as u64))
            .unwrap();
    }
    symlink("d00", root.join("link")).unwrap();
}

/// Changes a tenth of the files: content, mode, removal, and new files and folders.
fn mutate(root: &Path, rng: &mut Rng, round: u64) {
    let files: Vec<_> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    for path in &files {
        match rng.below(40) {
            0 => std::fs::write(path, random_bytes(100 + rng.below(2000) as usize, rng.next())).unwrap(),
            1 => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap(),
            2 => std::fs::remove_file(path).unwrap(),
            3 => std::fs::write(path.with_extension("new"), b"added").unwrap(),
            _ => {}
        }
    }
    let folder = root.join(format!("round{round}"));
    std::fs::create_dir_all(folder.join("inner")).unwrap();
    std::fs::write(folder.join("inner/r.dat"), b"round").unwrap();
    let _ = std::fs::remove_file(root.join("link"));
    symlink(format!("d{:02}", round % 23), root.join("link")).unwrap();
}

/// Kind, content, link target and mode of one entry of a restored tree.
type Seen = (String, Option<[u8; 32]>, Option<Vec<u8>>, u32);

/// Relative path -> what was seen there, in a restored tree.
fn brute(root: &Path) -> BTreeMap<String, Seen> {
    stat_walk(root)
        .into_iter()
        .filter(|(path, _)| !path.is_empty())
        .map(|(path, (stat, _, _))| {
            (String::from_utf8(path).unwrap(), (stat.kind.to_string(), stat.sha256, stat.link_target, stat.mode))
        })
        .collect()
}

#[test]
fn diff_and_find_agree_with_restored_trees() {
    let fixture = Fixture::new();
    let tree = fixture.path("tree");
    let mut rng = Rng(0x5eed);
    make_tree(&tree, 2500, &mut rng);
    let mut ids = Vec::new();
    for round in 0..4 {
        if round > 0 {
            mutate(&tree, &mut rng, round);
        }
        ids.push(fixture.backup(&tree)["snapshot_id"].as_str().unwrap().to_string());
    }
    let prefix = tree.to_str().unwrap().to_string();
    let restored: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let out = fixture.path(&format!("r{n}"));
            fixture.ok(&["restore", &format!("{id}:{prefix}"), "--target", out.to_str().unwrap()]);
            brute(&out)
        })
        .collect();
    for (a, b) in [(0, 1), (1, 3), (0, 3)] {
        let (old, new) = (&restored[a], &restored[b]);
        let mut expected: BTreeSet<(String, &str)> = BTreeSet::new();
        for (path, entry) in new {
            match old.get(path) {
                None => expected.insert((path.clone(), "added")),
                Some(before) if before.0 != entry.0 || before.1 != entry.1 || before.2 != entry.2 => {
                    expected.insert((path.clone(), "modified"))
                }
                Some(before) if before.3 != entry.3 && entry.0 != "symlink" => {
                    expected.insert((path.clone(), "metadata"))
                }
                _ => false,
            };
        }
        for path in old.keys().filter(|path| !new.contains_key(*path)) {
            expected.insert((path.clone(), "removed"));
        }
        let diff = fixture.json(&["diff", &ids[a], &ids[b], &prefix]);
        let actual: BTreeSet<(String, &str)> = diff["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                let path = e["path"].as_str().unwrap().strip_prefix(&prefix)?.trim_start_matches('/').to_string();
                (!path.is_empty()).then(|| {
                    (
                        path,
                        if e["change"] == "added" {
                            "added"
                        } else if e["change"] == "removed" {
                            "removed"
                        } else {
                            "modified"
                        },
                    )
                })
            })
            .collect();
        let without_metadata: BTreeSet<_> = expected.iter().filter(|(_, kind)| *kind != "metadata").cloned().collect();
        assert_eq!(actual, without_metadata, "diff {a} {b}");
        let with_metadata = fixture.json(&["diff", "--metadata", &ids[a], &ids[b], &prefix]);
        let mode_changes: BTreeSet<String> = with_metadata["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["what"].as_array().unwrap().iter().any(|w| w == "mode"))
            .map(|e| e["path"].as_str().unwrap().strip_prefix(&prefix).unwrap().trim_start_matches('/').to_string())
            .filter(|path| !path.is_empty())
            .collect();
        let expected_modes: BTreeSet<String> = new
            .iter()
            .filter(|(path, entry)| old.get(*path).is_some_and(|before| before.3 != entry.3 && before.0 == entry.0))
            .filter(|(_, entry)| entry.0 != "symlink")
            .map(|(path, _)| path.clone())
            .collect();
        assert_eq!(mode_changes, expected_modes, "diff --metadata {a} {b}: mode changes");
    }
    // find: every *.dat file in every snapshot, and nothing else.
    let found = fixture.json(&["find", "*.dat"]);
    let actual: BTreeSet<(String, String)> = found["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let path = m["path"].as_str().unwrap().strip_prefix(&prefix).unwrap().trim_start_matches('/').to_string();
            (m["snapshot_id"].as_str().unwrap().to_string(), path)
        })
        .collect();
    let mut expected = BTreeSet::new();
    for (id, tree) in ids.iter().zip(&restored) {
        for path in tree.keys().filter(|path| path.ends_with(".dat")) {
            expected.insert((id.clone(), path.clone()));
        }
    }
    assert_eq!(actual, expected);
    assert_eq!(found["snapshots_searched"], 4);
    // A path pattern: * stays within one name.
    let one_level = fixture.json(&["find", &format!("{prefix}/round*/*")]);
    assert!(one_level["matches"].as_array().unwrap().iter().all(|m| m["path"].as_str().unwrap().ends_with("/inner")));
    let none = fixture.run(&["find", "*.nothing"]);
    assert_eq!(none.status.code(), Some(14));
    // stats: a snapshot's logical size is the sum of its files.
    let stats = fixture.json(&["stats", &ids[3]]);
    let files: Vec<_> = walkdir::WalkDir::new(fixture.path("r3"))
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .collect();
    assert_eq!(stats["files"], files.len());
    let bytes: u64 = files.iter().map(|e| e.metadata().unwrap().len()).sum();
    assert_eq!(stats["logical_bytes"], bytes);
    let whole = fixture.json(&["stats"]);
    assert_eq!(whole["snapshot_count"], 4);
    assert!(whole["dedup_ratio"].as_f64().unwrap() > 3.0, "four snapshots of one slowly changing tree: {whole}");
}

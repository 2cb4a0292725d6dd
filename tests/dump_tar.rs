//! `dump SNAP:FOLDER --archive tar` (and `zip`) through the real binary, extracted by GNU tar (unzip) and
//! compared with the source: odd and long names, symlinks, hard links, a fifo, modes
//! and mtimes (with nanoseconds and before 1970, through POSIX extended headers); and a
//! real system folder compared by rsync, which knows nothing of coffer.

mod common;

use std::process::{Command, Stdio};

use common::Fixture;

fn dump_tar(fixture: &Fixture, spec: &str) -> std::process::Output {
    fixture.command(&["dump", spec, "--archive", "tar"]).stdout(Stdio::piped()).output().unwrap()
}

fn extract(tar: &[u8], into: &std::path::Path) {
    std::fs::create_dir_all(into).unwrap();
    let mut child = Command::new("tar").arg("-C").arg(into).arg("-xpf").arg("-").stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), tar).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_folder_dumped_as_tar_extracts_to_the_same_tree() {
    use std::os::unix::ffi::OsStrExt;
    let fixture = Fixture::new();
    let studies = fixture.path("src/studies");
    std::fs::create_dir_all(studies.join("sub")).unwrap();
    std::fs::write(studies.join("big.dcm"), common::random_bytes(3_000_000, 7)).unwrap();
    std::fs::write(studies.join("sub").join(std::ffi::OsStr::from_bytes(b"odd name \xe9")), b"hi").unwrap();
    std::fs::write(studies.join("sub").join("n".repeat(200)), b"long").unwrap();
    std::os::unix::fs::symlink("big.dcm", studies.join("link")).unwrap();
    // Targets kept exactly as written, including one too long for a tar header.
    std::os::unix::fs::symlink("a//b", studies.join("double-slash")).unwrap();
    std::os::unix::fs::symlink("sub/.", studies.join("dot")).unwrap();
    std::os::unix::fs::symlink("d/".repeat(80), studies.join("long-link")).unwrap();
    // `sub-x` sorts between `sub` and `sub/...` by bytes: tar needs tree order to set
    // `sub`'s time after its content and to see a hard link's first name first.
    std::fs::write(studies.join("sub-x"), b"sibling").unwrap();
    std::fs::hard_link(studies.join("big.dcm"), studies.join("sub/hard.dcm")).unwrap();
    nix::unistd::mkfifo(&studies.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    std::fs::set_permissions(studies.join("big.dcm"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    // tar keeps whole seconds.
    for entry in walkdir::WalkDir::new(&studies).contents_first(true).into_iter().map(|e| e.unwrap()) {
        if !entry.path_is_symlink() {
            common::set_mtime(entry.path(), 1_600_000_000, 0);
        }
    }
    // The symlinks' own times too (not the files they name).
    let second = nix::sys::time::TimeSpec::new(1_600_000_000, 0);
    for link in ["link", "double-slash", "dot", "long-link"] {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &studies.join(link),
            &second,
            &second,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    fixture.backup(&fixture.path("src"));

    let spec = format!("latest:{}", studies.display());
    let output = dump_tar(&fixture, &spec);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = fixture.path("out");
    extract(&output.stdout, &out);
    common::assert_same_tree(&studies, &out.join("studies"));

    // A folder without --archive is one sentence with the hint; a missing path is 14.
    let refused = fixture.run(&["dump", &spec]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--archive tar"));
    assert_eq!(dump_tar(&fixture, "latest:/no/such").status.code(), Some(14));
    // A damaged pack stops the stream with exit 13, never a silently wrong archive.
    for entry in walkdir::WalkDir::new(fixture.repo().join("data")).into_iter().map(|e| e.unwrap()) {
        if entry.file_type().is_file() && entry.metadata().unwrap().len() > 1_000_000 {
            let mut bytes = std::fs::read(entry.path()).unwrap();
            bytes[500_000] ^= 1;
            std::fs::write(entry.path(), bytes).unwrap();
        }
    }
    assert_eq!(dump_tar(&fixture, &spec).status.code(), Some(13));
}

#[test]
fn mtimes_with_nanoseconds_and_before_1970_survive_tar() {
    let fixture = Fixture::new();
    let folder = fixture.path("src/times");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    std::fs::write(folder.join("recent.dcm"), b"recent").unwrap();
    std::fs::write(folder.join("sub/old.dcm"), b"old").unwrap();
    std::fs::write(folder.join("whole.dcm"), b"whole").unwrap();
    common::set_mtime(&folder.join("recent.dcm"), 1_700_000_000, 123_456_789);
    common::set_mtime(&folder.join("sub/old.dcm"), -305_121_600, 250_000_000);
    common::set_mtime(&folder.join("whole.dcm"), 1_600_000_000, 0);
    common::set_mtime(&folder.join("sub"), 1_650_000_000, 999_999_999);
    common::set_mtime(&folder, 1_650_000_001, 1);
    fixture.backup(&folder);
    let dumped = dump_tar(&fixture, &format!("latest:{}", folder.display()));
    assert!(dumped.status.success(), "{}", String::from_utf8_lossy(&dumped.stderr));
    let out = fixture.path("out");
    extract(&dumped.stdout, &out);
    common::assert_same_tree(&folder, &out.join("times"));
}

#[test]
fn a_real_system_folder_round_trips_through_tar() {
    let source = std::path::Path::new("/usr/share/zoneinfo");
    if !source.is_dir() {
        eprintln!("skipped: no /usr/share/zoneinfo");
        return;
    }
    let fixture = Fixture::new();
    fixture.backup(source);
    let output = dump_tar(&fixture, "latest:/usr/share/zoneinfo");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out = fixture.path("out");
    extract(&output.stdout, &out);
    // rsync lists every difference in content, links, modes, owners or times.
    let rsync = Command::new("rsync")
        .args(["-aHn", "--checksum", "--delete", "-i"])
        .arg(format!("{}/", source.display()))
        .arg(format!("{}/", out.join("zoneinfo").display()))
        .output();
    match rsync {
        Ok(rsync) => {
            assert!(rsync.status.success());
            assert_eq!(String::from_utf8_lossy(&rsync.stdout), "", "rsync found differences");
        }
        Err(_) => {
            assert!(std::env::var("COFFER_REQUIRE_S3").is_err(), "scripts/test.sh installs rsync");
            eprintln!("skipped the comparison: no rsync");
        }
    }
}

#[test]
fn a_closed_pipe_ends_a_dump_quietly_and_sigterm_ends_it_promptly() {
    let fixture = Fixture::new();
    let data = fixture.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("big.bin"), common::random_bytes(40_000_000, 9)).unwrap();
    fixture.backup(&data);
    let file = format!("latest:{}/big.bin", data.display());
    // The reader goes away after 100 bytes, as `| head -c 100` does.
    for args in
        [vec!["dump", file.as_str()], vec!["--json", "dump", &format!("latest:{}", data.display()), "--archive", "tar"]]
    {
        let mut child = fixture.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut first = [0u8; 100];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(output.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    // SIGTERM while streaming: it stops with 143, long before the end.
    let mut child = fixture.command(&["dump", &file]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = vec![0u8; 65536];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(first.len() + rest.len() < 40_000_000, "the dump went on to the end");
}

/// `--archive zip`: a ZIP64 stream that Info-ZIP's unzip and Python's zipfile check and
/// extract to the same files, modes, symlinks and times (to the second); a FIFO, which
/// zip cannot hold, is left out with a warning.
#[test]
fn a_folder_dumped_as_zip_extracts_to_the_same_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fixture = Fixture::new();
    let studies = fixture.path("src/studies");
    std::fs::create_dir_all(studies.join("series")).unwrap();
    std::fs::write(studies.join("series/img.dcm"), common::random_bytes(3_000_000, 11)).unwrap();
    std::fs::write(studies.join("notes é.txt"), b"ward 3\n").unwrap();
    std::fs::write(studies.join("empty"), b"").unwrap();
    std::fs::set_permissions(studies.join("series/img.dcm"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("series/img.dcm", studies.join("link")).unwrap();
    nix::unistd::mkfifo(&studies.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A name a Windows extractor would split at the backslash: left out, said.
    std::fs::write(studies.join("..\\..\\evil.txt"), b"x").unwrap();
    std::fs::write(studies.join("y2050.txt"), b"later").unwrap();
    for (name, seconds) in [
        ("series/img.dcm", 1_700_000_000),
        ("notes é.txt", 1_600_000_001),
        ("empty", 1_650_000_000),
        ("y2050.txt", 2_524_608_000),
    ] {
        common::set_mtime(&studies.join(name), seconds, 0);
    }
    fixture.backup(&studies);
    let output = fixture
        .command(&["dump", &format!("latest:{}", studies.display()), "--archive", "zip"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("1 FIFO(s), device(s) or socket(s) left out"), "{stderr}");
    assert!(stderr.contains("evil.txt: its name holds a backslash"), "{stderr}");
    let archive = fixture.path("studies.zip");
    std::fs::write(&archive, &output.stdout).unwrap();
    let tested = Command::new("unzip").arg("-tq").arg(&archive).output().expect("unzip (scripts/test.sh installs it)");
    assert!(tested.status.success(), "unzip -t: {}", String::from_utf8_lossy(&tested.stdout));
    let python = Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(len(z.infolist()))"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));
    assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), "7", "studies/, series/, four files and the link");
    let out = fixture.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let extracted = Command::new("unzip").arg("-q").arg(&archive).arg("-d").arg(&out).output().unwrap();
    assert!(extracted.status.success(), "{}", String::from_utf8_lossy(&extracted.stderr));
    let restored = out.join("studies");
    for name in ["series/img.dcm", "notes é.txt", "empty", "y2050.txt"] {
        let (a, b) = (studies.join(name), restored.join(name));
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{name}");
        let (a, b) = (std::fs::metadata(&a).unwrap(), std::fs::metadata(&b).unwrap());
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{name}: mode");
        assert_eq!(a.mtime(), b.mtime(), "{name}: mtime");
    }
    assert_eq!(std::fs::read_link(restored.join("link")).unwrap(), std::path::Path::new("series/img.dcm"));
    assert!(!restored.join("fifo").exists());
    assert!(!restored.join("..\\..\\evil.txt").exists());
    // A FIFO alone: nothing a zip can hold, one sentence and exit 2, no archive.
    let fifo =
        fixture.command(&["dump", &format!("latest:{}/fifo", studies.display()), "--archive", "zip"]).output().unwrap();
    assert_eq!(fifo.status.code(), Some(2), "{}", String::from_utf8_lossy(&fifo.stderr));
    assert!(fifo.stdout.is_empty());
    // A reader that goes away ends the dump quietly, as for tar.
    let mut head = fixture
        .command(&["dump", &format!("latest:{}", studies.display()), "--archive", "zip"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(head.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(head.stdout.take());
    let ended = head.wait_with_output().unwrap();
    assert_eq!(ended.status.code(), Some(0), "{}", String::from_utf8_lossy(&ended.stderr));
    // A damaged file stops the stream with exit 13, naming it.
    let mut packs: Vec<std::path::PathBuf> = walkdir::WalkDir::new(fixture.repo().join("data"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.is_file())
        .collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let pack = packs.last().unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(pack, bytes).unwrap();
    let damaged = fixture
        .command(&["dump", &format!("latest:{}", studies.display()), "--archive", "zip"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    assert_eq!(damaged.status.code(), Some(13), "{stderr}");
    assert!(stderr.contains("img.dcm"), "{stderr}");
}

//! One test per fixed bug of the adversarial review (issue 11, finding 8), each through
//! the real binary.

mod common;

use common::Fixture;

#[test]
fn a_missing_or_unreadable_password_file_exits_12() {
    let fixture = Fixture::new();
    let missing = fixture.path("no-such-password-file");
    let output = fixture
        .command(&["snapshots", "--password-file", missing.to_str().unwrap()])
        .env_remove("COFFER_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(12), "{stderr}");
    assert!(stderr.contains("cannot read password file") && stderr.contains("no-such-password-file"), "{stderr}");
    let folder = fixture.path("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let output = fixture.command(&["snapshots"]).env("COFFER_PASSWORD_FILE", &folder).output().unwrap();
    assert_eq!(output.status.code(), Some(12), "{}", String::from_utf8_lossy(&output.stderr));
}

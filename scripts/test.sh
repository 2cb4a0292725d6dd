#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, fuzz-bounded and CLI
# integration tests. Installs what it needs; CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# tests/cli_help.rs renders the manual pages with man; tests/dump_tar.rs compares a
# system folder with rsync, a tool that knows nothing of coffer; tests/operations.rs has
# systemd-analyze verify the timers and openssl make the SMTP server's certificates.
if { ! command -v man || ! command -v rsync || ! command -v systemd-analyze || ! command -v openssl \
    || ! command -v unzip; } >/dev/null && command -v apt-get >/dev/null; then
    echo "== installing man-db, rsync, systemd (for systemd-analyze), openssl and unzip (once)"
    apt-get update -qq >&2 && apt-get install -y -qq man-db rsync systemd openssl unzip >&2
fi
# tests/operations.rs sends notifications to a real SMTP server (aiosmtpd), and
# tests/json_schemas.rs validates every --json document (jsonschema): both from PyPI.
if ! python3 -c "import aiosmtpd, jsonschema" 2>/dev/null; then
    echo "== installing aiosmtpd and jsonschema (once)"
    python3 -m pip install --quiet --disable-pip-version-check aiosmtpd jsonschema >&2
fi
export COFFER_REQUIRE_SMTP=1 COFFER_REQUIRE_JSONSCHEMA=1
# A clean clone (CI) gains nothing from incremental compilation but its disk use.
if [ ! -d target/debug/incremental ]; then
    export CARGO_INCREMENTAL=0
fi
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
STATE="$(mktemp -d "${TMPDIR:-/tmp}/coffer-test.XXXXXX")"
cleanup() {
    scripts/s3_server.sh stop "$STATE/s3s"
    scripts/s3_server.sh stop "$STATE/moto"
    scripts/pg_server.sh stop "$STATE/pg"
    rm -rf "$STATE"
}
trap cleanup EXIT
echo "== starting S3 servers on loopback (s3s-fs, moto)"
# Assignments first, so a server that fails to start stops the script (set -e).
S3S_ENV="$(scripts/s3_server.sh start "$STATE/s3s")"
eval "$S3S_ENV"
MOTO_ENV="$(scripts/s3_server.sh start-moto "$STATE/moto")"
eval "$MOTO_ENV"
export COFFER_REQUIRE_S3=1
# The suite makes thousands of throwaway keys; real ones must cost more (cli/keys.rs).
export COFFER_TESTONLY_WEAK_KDF=1
echo "== starting a private PostgreSQL cluster on loopback"
PG_ENV="$(scripts/pg_server.sh start "$STATE/pg")"
eval "$PG_ENV"
export COFFER_REQUIRE_PG=1

echo "== cargo test (local repositories; S3 tests against s3s-fs and moto; PostgreSQL tests)"
cargo test --all-targets --locked
echo "== integration suite again with every repository on S3"
COFFER_TEST_BACKEND=s3 cargo test --locked --test roundtrip
# The benchmarks were built, and run once as tests, by `cargo test --all-targets` in the
# test profile: a release build of them here would compile every crate a third time.

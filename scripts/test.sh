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

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
echo "== benchmarks build"
cargo bench --no-run --locked >/dev/null

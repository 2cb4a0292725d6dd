# Shared by the whole-process benchmarks (sourced, not run): messages, and the coffer
# binary to measure. Needs ROOT (the checkout) set by the caller.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Sets COFFER: $COFFER_BIN made absolute if given, else a fresh release build of ROOT.
find_coffer() {
    if [ -n "${COFFER_BIN:-}" ]; then
        COFFER="$(cd "$(dirname "$COFFER_BIN")" && pwd)/$(basename "$COFFER_BIN")"
    else
        log "building coffer: cargo build --release --locked"
        (cd "$ROOT" && cargo build --release --locked >&2)
        COFFER="$ROOT/target/release/coffer"
    fi
    [ -x "$COFFER" ] || die "no coffer binary at $COFFER"
}

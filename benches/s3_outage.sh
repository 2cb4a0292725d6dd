#!/usr/bin/env bash
# Storage faults at the scale of a nightly backup (issue 12): a 300 MB backup to a
# private s3s-fs through tests/fault_proxy.py, (1) without faults, (2) with a 60 s
# outage starting halfway, (3) failing at 80% (storage gone for longer than a 10 s
# budget), then run again: how long each took and how much the rerun uploaded.
#
#   COFFER_BIN=target/release/coffer bash benches/s3_outage.sh
set -euo pipefail
# Throwaway repositories get cheap keys (below the floor for real ones).
export COFFER_TESTONLY_WEAK_KDF=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benches/common.sh"
find_coffer
WORK="$(mktemp -d "${TMPDIR:-/tmp}/coffer-s3-outage.XXXXXX")"
cleanup() {
    [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null
    "$ROOT/scripts/s3_server.sh" stop "$WORK/s3s"
    rm -rf "$WORK"
}
trap cleanup EXIT
eval "$("$ROOT/scripts/s3_server.sh" start "$WORK/s3s")"
python3 "$ROOT/tests/fault_proxy.py" --upstream "${AWS_ENDPOINT_URL#http://}" > "$WORK/ports" &
PROXY_PID=$!
while [ ! -s "$WORK/ports" ]; do sleep 0.1; done
read -r PORT CONTROL < "$WORK/ports"
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" COFFER_PASSWORD=outage COFFER_CACHE_DIR="$WORK/cache"
control() { curl -s -X POST -d "$2" "http://127.0.0.1:$CONTROL/$1" > /dev/null; }
puts() { curl -s "http://127.0.0.1:$CONTROL/log" | python3 -c 'import json,sys; print(sum(1 for e in json.load(sys.stdin) if e[0]=="PUT" and "/data/" in e[1]))'; }

mkdir -p "$WORK/src"
for i in $(seq 1 75); do head -c 4000000 /dev/urandom > "$WORK/src/scan$i.dcm"; done
log "source: $(du -sh --apparent-size "$WORK/src" | cut -f1), default S3 pack size"

run() { # NAME REPO [ENV...]: a backup in the background; its pid in PID
    local name="$1" repo="$2"; shift 2
    env "$@" "$COFFER" --repo "$repo" --json backup "$WORK/src" > "$WORK/$name.json" 2> "$WORK/$name.err" &
    PID=$!
}
added() { tail -1 "$WORK/$1.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["summary"]["bytes_added"])'; }

for repo in plain outage failure; do "$COFFER" --repo "s3://coffer-test/$repo" -q init --kdf-memory-kib 1024 --kdf-iterations 1; done

control clear '{}'
start=$(date +%s.%N); "$COFFER" --repo s3://coffer-test/plain -q backup "$WORK/src"; end=$(date +%s.%N)
# Uploads of pack data (whole packs, or parts of larger ones) the backup makes: the
# steps below cut the storage off after a share of them, whatever the pack size.
UPLOADS=$(puts)
log "(1) no faults: $(echo "$end - $start" | bc) s, $UPLOADS uploads of pack data"

control clear '{}'
start=$(date +%s.%N)
run outage s3://coffer-test/outage
while [ "$(puts)" -lt $((UPLOADS / 2)) ]; do sleep 0.1; done
control outage '{"seconds": 60}'
log "(2) 60 s outage began halfway ($((UPLOADS / 2)) of $UPLOADS uploads)"
wait "$PID" || die "the backup through a 60 s outage failed: $(cat "$WORK/outage.err")"
end=$(date +%s.%N)
log "(2) through a 60 s outage: $(echo "$end - $start" | bc) s, exit 0"

control clear '{}'
run failure s3://coffer-test/failure COFFER_S3_RETRY_TIMEOUT=10
while [ "$(puts)" -lt $((UPLOADS * 8 / 10)) ]; do sleep 0.1; done
control outage '{"seconds": 40}'
status=0; wait "$PID" || status=$?
log "(3) failing at 80%: exit $status: $(tail -1 "$WORK/failure.err" | cut -c1-160)"
control resume '{}'
start=$(date +%s.%N)
run rerun s3://coffer-test/failure
wait "$PID"
end=$(date +%s.%N)
log "(3) the rerun added $(added rerun) bytes of $(du -sb "$WORK/src" | cut -f1) in $(echo "$end - $start" | bc) s"

#!/usr/bin/env bash
# Requests that `coffer snapshots` makes on an S3 repository holding 1,000 snapshots,
# counted by tests/fault_proxy.py in front of a private s3s-fs: a first run (empty
# cache) and a second run (records cached). With OLD_COFFER set, the same for that
# binary, for a before/after comparison.
#
#   COFFER_BIN=target/release/coffer OLD_COFFER=/path/to/old/coffer bash benches/snapshot_listing.sh
set -euo pipefail
# Throwaway repositories get cheap keys (below the floor for real ones).
export COFFER_TESTONLY_WEAK_KDF=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benches/common.sh"
find_coffer
COUNT="${COUNT:-1000}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/coffer-listing.XXXXXX")"
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
export COFFER_REPOSITORY=s3://coffer-test/listing COFFER_PASSWORD=listing
"$COFFER" -q init --kdf-memory-kib 64 --kdf-iterations 1
log "writing $COUNT snapshots"
for i in $(seq 1 "$COUNT"); do
    echo "record $i" | COFFER_CACHE_DIR="$WORK/cache-writer" "$COFFER" -q backup --stdin --stdin-name "n$i.txt" --no-progress
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
count() { # BINARY CACHE: requests of one `snapshots`
    curl -s -X POST -d '{}' "http://127.0.0.1:$CONTROL/clear" > /dev/null
    COFFER_CACHE_DIR="$2" "$1" snapshots > /dev/null
    curl -s "http://127.0.0.1:$CONTROL/log" | python3 -c 'import collections,json,sys
log=json.load(sys.stdin); kinds=collections.Counter(e[0]+(" LIST" if "list-type" in e[2] else "") for e in log)
print(len(log), "requests:", dict(kinds))'
}
log "this coffer, empty cache: $(count "$COFFER" "$WORK/cache-new")"
log "this coffer, second run:  $(count "$COFFER" "$WORK/cache-new")"
if [ -n "${OLD_COFFER:-}" ]; then
    log "old coffer, empty cache:  $(count "$OLD_COFFER" "$WORK/cache-old")"
    log "old coffer, second run:   $(count "$OLD_COFFER" "$WORK/cache-old")"
fi

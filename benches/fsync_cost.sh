#!/usr/bin/env bash
# What durability costs (issue 13): the first and an unchanged backup, and a full
# restore, of a tree of many small files and of a tree of large ones, with this coffer
# (objects fsynced, folders fsynced per commit step, a restore ending in syncfs) and
# with OLD_COFFER (a build from before, which did not fsync). Both run in turns, REPS
# times; medians are reported, and the ratio new/old.
#
#   COFFER_BIN=target/release/coffer OLD_COFFER=/path/to/old/coffer bash benches/fsync_cost.sh
set -euo pipefail
# Throwaway repositories get cheap keys (below the floor for real ones).
export COFFER_TESTONLY_WEAK_KDF=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benches/common.sh"
find_coffer
OLD="${OLD_COFFER:?OLD_COFFER names a coffer built before durable commits}"
REPS="${REPS:-3}"
WORK="$(mktemp -d "${WORK_DIR:-/var/tmp}/coffer-fsync.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export COFFER_PASSWORD=fsync

log "making the trees"
mkdir -p "$WORK/small" "$WORK/large"
python3 - "$WORK" <<'PY'
import os, random, sys
work = sys.argv[1]
rng = random.Random(7)
for folder in range(150):
    path = f"{work}/small/d{folder:03}"
    os.makedirs(path)
    for name in range(100):
        size = rng.choice([200, 1500, 4000, 9000, 30000])
        with open(f"{path}/f{name:03}.txt", "wb") as out:
            out.write(os.urandom(size // 2) + b"x" * (size - size // 2))
for name in range(12):
    with open(f"{work}/large/part{name:02}.bin", "wb") as out:
        out.write(os.urandom(40 << 20))
PY
seconds() { local start end; start=$(date +%s.%N); "$@" > /dev/null; end=$(date +%s.%N); echo "$end - $start" | bc; }
declare -A TIMES
for rep in $(seq 1 "$REPS"); do
    for tree in small large; do
        for tool in new old; do
            binary="$COFFER"; [ "$tool" = old ] && binary="$OLD"
            repo="$WORK/repo-$tool-$tree"; rm -rf "$repo" "$WORK/cache-$tool" "$WORK/out"
            export COFFER_CACHE_DIR="$WORK/cache-$tool"
            "$binary" --repo "$repo" -q init --kdf-memory-kib 1024 --kdf-iterations 1
            sync
            TIMES[$tool-$tree-first]+="$(seconds "$binary" --repo "$repo" -q backup "$WORK/$tree") "
            TIMES[$tool-$tree-unchanged]+="$(seconds "$binary" --repo "$repo" -q backup "$WORK/$tree") "
            sync
            TIMES[$tool-$tree-restore]+="$(seconds "$binary" --repo "$repo" -q restore latest --target "$WORK/out") "
            rm -rf "$WORK/out"; sync
        done
    done
    log "repetition $rep done"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-8s %-10s %10s %10s %8s\n' tree step old_s new_s new/old
for tree in small large; do
    for step in first unchanged restore; do
        old=$(echo "${TIMES[old-$tree-$step]}" | median); new=$(echo "${TIMES[new-$tree-$step]}" | median)
        printf '%-8s %-10s %10.2f %10.2f %8.2f\n' "$tree" "$step" "$old" "$new" "$(echo "$new / $old" | bc -l)"
    done
done

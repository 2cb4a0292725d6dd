#!/usr/bin/env bash
# Time and peak memory of check, forget+prune and repair on a repository of a few GB
# and a few hundred thousand chunks.
#
# Builds a tree of FILES small files (default 300,000 of 4-16 KiB, incompressible, no
# two alike: about 3 GB, one chunk each) in 300 folders, backs it up, rewrites a third
# of the files (VERSIONS times in all), backing up after each, and then measures:
#   check                        structure only
#   check --read-data            every pack downloaded and every blob opened
#   forget --keep-last 1 --prune the older versions' chunks become unused: packs that
#                                hold only those are deleted, mixed ones repacked
#   check --read-data            again, after the prune (must be clean)
#   repair index --dry-run       every pack header read, nothing written
# each under /usr/bin/time (wall time, peak RSS), with the repository's size, pack
# and blob counts before and after the prune.
#
# Run:   bash benches/maintenance.sh                 # ~3 GB; about 15 minutes here
#        FILES=20000 bash benches/maintenance.sh     # a quick look
#
# Environment:
#   FILES       number of files (default 300000)
#   VERSIONS    backups of changing versions of the tree (default 3)
#   WORK        work directory (default /tmp/coffer-maintenance); needs about
#               2.5 x the tree's size free; the tree is kept and reused
#   COFFER_BIN  coffer binary; if unset, `cargo build --release --locked` is run
#   JOBS        --jobs for check and repair (default: coffer's default, 4)
#   KEEP=1      keep the repository and cache
#
# Output: WORK/results.jsonl (one JSON object per step) and WORK/report.md (printed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
FILES="${FILES:-300000}"
VERSIONS="${VERSIONS:-3}"
WORK="${WORK:-/tmp/coffer-maintenance}"
KEEP="${KEEP:-0}"
JOBS_ARGS=()
[ -n "${JOBS:-}" ] && JOBS_ARGS=(--jobs "$JOBS")
unset COFFER_PASSWORD_FILE COFFER_PASSWORD_COMMAND

# shellcheck source=benches/common.sh
. "$HERE/common.sh"

[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
find_coffer

TREE="$WORK/tree-$FILES"
export COFFER_REPOSITORY="$WORK/repo" COFFER_CACHE_DIR="$WORK/cache" COFFER_PASSWORD="coffer-bench-password"
RESULTS="$WORK/results.jsonl"
mkdir -p "$WORK/logs"
rm -rf "$COFFER_REPOSITORY" "$COFFER_CACHE_DIR" "$RESULTS"

# write_version N: version N of the tree. Version 1 writes every file; version N > 1
# rewrites the files whose number is N-2 mod 3 (a third), with content of version N.
write_version() {
    python3 - "$TREE" "$FILES" "$1" <<'EOF'
import os, random, sys
root, files, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for number in range(files):
    if version > 1 and number % 3 != (version - 2) % 3:
        continue
    folder = os.path.join(root, f"d{number // 1000:03d}")
    if number % 1000 == 0:
        os.makedirs(folder, exist_ok=True)
    generator = random.Random(number * 1000 + version)
    size = generator.randrange(4096, 16384)
    with open(os.path.join(folder, f"f{number:07d}"), "wb") as out:
        out.write(generator.randbytes(size))
EOF
}

measure() { # step -- command...
    local step="$1"
    shift 2
    local tf="$WORK/logs/time.out" rc=0 wall rss
    sync
    /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$WORK/logs/$step.log" 2>&1 || rc=$?
    # check exits 13 on damage, which must not happen here
    [ "$rc" = 0 ] || { tail -20 "$WORK/logs/$step.log" >&2; die "$step failed with exit code $rc"; }
    read -r wall rss < <(tail -1 "$tf")
    printf '{"step": "%s", "wall_s": %s, "rss_kb": %s}\n' "$step" "$wall" "$rss" >>"$RESULTS"
    log "  $step: ${wall}s, $((rss / 1024)) MiB"
}

shape() { # label: repository size, packs, blobs (from the pack headers)
    local bytes packs blobs
    bytes="$(du -sb "$COFFER_REPOSITORY" | cut -f1)"
    read -r packs blobs < <("$COFFER" --json repair index --dry-run | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["pack_count"], r["blob_count"])')
    printf '{"shape": "%s", "bytes": %s, "packs": %s, "blobs": %s}\n' "$1" "$bytes" "$packs" "$blobs" >>"$RESULTS"
    log "  repository $1: $((bytes / 1048576)) MiB, $packs packs, $blobs blobs"
}

if [ ! -f "$TREE/.complete-$VERSIONS" ]; then
    log "writing $FILES files into $TREE"
    rm -rf "$TREE"
    write_version 1
    touch "$TREE/.complete-1"
fi
"$COFFER" -q init
for version in $(seq 1 "$VERSIONS"); do
    if [ "$version" -gt 1 ] && [ ! -f "$TREE/.complete-$VERSIONS" ]; then
        log "rewriting a third of the files (version $version)"
        write_version "$version"
    fi
    sleep 1.1
    measure "backup_v$version" -- "$COFFER" -q backup "$TREE"
done
touch "$TREE/.complete-$VERSIONS"
shape before_prune
measure check -- "$COFFER" -q check
measure check_read_data -- "$COFFER" -q check --read-data "${JOBS_ARGS[@]}"
measure forget_prune -- "$COFFER" -q forget --keep-last 1 --prune
shape after_prune
measure check_read_data_after_prune -- "$COFFER" -q check --read-data "${JOBS_ARGS[@]}"
measure repair_index_dry_run -- "$COFFER" -q repair index --dry-run "${JOBS_ARGS[@]}"

python3 - "$RESULTS" "$FILES" "$VERSIONS" "$("$COFFER" --version)" >"$WORK/report.md" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
files, versions, version = sys.argv[2], sys.argv[3], sys.argv[4]
print(f"### Maintenance on {int(files):,} files, {versions} versions ({version})\n")
print("| repository | size | packs | blobs |\n|---|---:|---:|---:|")
for row in rows:
    if "shape" in row:
        print(f"| {row['shape'].replace('_', ' ')} | {row['bytes'] / 2**30:.2f} GiB | {row['packs']:,} | {row['blobs']:,} |")
print("\n| step | wall time | peak RSS |\n|---|---:|---:|")
for row in rows:
    if "step" in row:
        print(f"| {row['step'].replace('_', ' ')} | {row['wall_s']:.2f} s | {row['rss_kb'] / 1024:.0f} MiB |")
EOF
cat "$WORK/report.md"
[ "$KEEP" = 1 ] || rm -rf "$COFFER_REPOSITORY" "$COFFER_CACHE_DIR"

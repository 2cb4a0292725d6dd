#!/usr/bin/env bash
# Memory and per-file cost with a large tree: a synthetic tree of FILES small files
# (default 1,000,000: 1,000 directories of 1,000 files, 0-4 KiB each, deterministic
# content, no two files alike) is backed up by coffer and by restic (and any other tool
# in TOOLS), then backed up again unchanged. Reports, per tool, wall time and peak RSS of
# both backups, and the time per file of each (µs/file); the unchanged run's µs/file is
# the figure to compare with restic's.
#
# Run:   bash benches/many_files.sh                   # 1M files (the tree takes ~4 GB of
#                                                     # inodes and blocks; tens of minutes)
#        FILES=20000 bash benches/many_files.sh       # a quick look
#
# Environment:
#   FILES       number of files (default 1000000)
#   WORK        work directory (default /tmp/coffer-many-files); the tree is kept in
#               WORK/tree-FILES between runs and reused
#   TOOLS       tools to run (default "coffer restic"; "borg" and "rustic" also work)
#   COFFER_BIN  coffer binary; if unset, `cargo build --release --locked` is run
#   CLEAN=1     delete the tree at the end
#   KEEP=1      keep the repositories and caches
#   UPDATE_DOCS=1  also put the report into docs/BENCHMARKS.md (between the
#               many-files markers; the many-files-smoke ones when FILES < 1000000)
#
# Output: WORK/results.jsonl (one JSON object per measurement) and WORK/report.md
# (printed). Each tool gets a fresh repository and cache; the unchanged backup runs
# with the cache the first one left, as a nightly run would. Nothing is dropped from
# the page cache.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
FILES="${FILES:-1000000}"
WORK="${WORK:-/tmp/coffer-many-files}"
TOOLS="${TOOLS:-coffer restic}"
CLEAN="${CLEAN:-0}"
KEEP="${KEEP:-0}"
PASSWORD="coffer-bench-password"
export PATH="$HOME/.cargo/bin:$PATH"
unset COFFER_PASSWORD_FILE COFFER_PASSWORD_COMMAND RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND \
    BORG_PASSCOMMAND BORG_PASSPHRASE_FD RUSTIC_PASSWORD_FILE RUSTIC_PASSWORD_COMMAND

# shellcheck source=benches/common.sh
. "$HERE/common.sh"

[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
for t in $TOOLS; do
    case "$t" in
    coffer) ;;
    restic | borg | rustic) command -v "$t" >/dev/null || die "$t is not installed (see benches/compare.sh, which installs it)" ;;
    *) die "unknown tool '$t'" ;;
    esac
done
find_coffer
export COFFER

mkdir -p "$WORK/logs"
TREE="$WORK/tree-$FILES"
if [ ! -f "$TREE.done" ]; then
    log "building $FILES files in $TREE"
    rm -rf "$TREE"
    python3 "$HERE/compare_data.py" many "$TREE" --files "$FILES" >"$WORK/logs/tree.json"
    touch "$TREE.done"
else
    log "reusing $TREE"
fi
read -r TREE_BYTES < <(du -sb --apparent-size "$TREE" | cut -f1)

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

do_init() {
    case "$1" in
    coffer) "$COFFER" -q init ;;
    restic) restic -q init ;;
    borg) borg init -e repokey-blake2 ;;
    rustic) rustic --no-progress init ;;
    esac
}
do_backup() { # tool n
    case "$1" in
    coffer) "$COFFER" -q backup "$TREE" ;;
    restic) restic -q backup "$TREE" ;;
    borg) borg create "::b$2" "$TREE" ;;
    rustic) rustic --no-progress backup "$TREE" ;;
    esac
}
export -f do_init do_backup
export TREE

measure() { # tool step command...
    local tool="$1" step="$2" tf="$WORK/logs/time.out" logf="$WORK/logs/$1.$2.log" rc=0 wall rss
    shift 2
    sync
    /usr/bin/time -f '%e %M' -o "$tf" bash -c '"$@"' _ "$@" >"$logf" 2>&1 </dev/null || rc=$?
    if [ "$rc" != 0 ] && ! { [ "$tool" = borg ] && [ "$rc" = 1 ]; }; then
        tail -20 "$logf" >&2
        die "$tool $step failed with exit code $rc"
    fi
    read -r wall rss < <(tail -1 "$tf")
    printf '{"tool": "%s", "step": "%s", "files": %d, "wall_s": %s, "rss_kb": %s}\n' \
        "$tool" "$step" "$FILES" "$wall" "$rss" >>"$RESULTS"
    log "  $tool $step: ${wall}s, $((rss / 1024)) MiB"
}

for tool in $TOOLS; do
    base="$WORK/run/$tool"
    rm -rf "$base"
    mkdir -p "$base/cache"
    case "$tool" in
    coffer) export COFFER_REPOSITORY="$base/repo" COFFER_PASSWORD="$PASSWORD" COFFER_CACHE_DIR="$base/cache" ;;
    restic) export RESTIC_REPOSITORY="$base/repo" RESTIC_PASSWORD="$PASSWORD" RESTIC_CACHE_DIR="$base/cache" ;;
    borg) export BORG_REPO="$base/repo" BORG_PASSPHRASE="$PASSWORD" BORG_BASE_DIR="$base/cache" ;;
    rustic) export RUSTIC_REPOSITORY="$base/repo" RUSTIC_PASSWORD="$PASSWORD" RUSTIC_CACHE_DIR="$base/cache" ;;
    esac
    measure "$tool" init do_init "$tool"
    sleep 1.1
    measure "$tool" backup_first do_backup "$tool" 1
    measure "$tool" backup_unchanged do_backup "$tool" 2
    printf '{"tool": "%s", "step": "repo_size", "bytes": %s}\n' "$tool" "$(du -sb "$base/repo" | cut -f1)" >>"$RESULTS"
    [ "$KEEP" = 1 ] || rm -rf "$base"
done
[ "$CLEAN" = 1 ] && rm -rf "$TREE" "$TREE.done"

FILES="$FILES" TREE_BYTES="$TREE_BYTES" VERSIONS="$(for t in $TOOLS; do
    case "$t" in
    coffer) echo "$("$COFFER" --version) (source $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))" ;;
    restic) restic version ;; borg) borg --version ;; rustic) rustic --version ;;
    esac | head -1
done)" python3 - "$RESULTS" >"$WORK/report.md" <<'PYEOF'
import json, os, sys, time
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
files = int(os.environ["FILES"])
by = {(r["tool"], r["step"]): r for r in rows}
tools = list(dict.fromkeys(r["tool"] for r in rows))
print(f"### Many small files: {files:,} files, {int(os.environ['TREE_BYTES']) / 2**20:.0f} MiB\n")
print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; versions: "
      + "; ".join(f"`{v}`" for v in os.environ["VERSIONS"].splitlines()) + "\n")
print("| tool | first backup | peak RSS | µs/file | unchanged backup | peak RSS | µs/file | repository |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for t in tools:
    f, u, s = by.get((t, "backup_first")), by.get((t, "backup_unchanged")), by.get((t, "repo_size"))
    cells = [t]
    for r in (f, u):
        cells += [f"{r['wall_s']:.1f} s", f"{r['rss_kb'] / 1024:.0f} MiB", f"{r['wall_s'] / files * 1e6:.1f}"]
    cells.append(f"{s['bytes'] / 2**20:.0f} MiB" if s else "—")
    print("| " + " | ".join(cells) + " |")
c, r = by.get(("coffer", "backup_unchanged")), by.get(("restic", "backup_unchanged"))
if c and r:
    print(f"\ncoffer's unchanged backup: {c['wall_s'] / files * 1e6:.1f} µs/file against restic's "
          f"{r['wall_s'] / files * 1e6:.1f} µs/file ({c['wall_s'] / r['wall_s']:.2f}x); peak RSS "
          f"{c['rss_kb'] / 1024:.0f} MiB against {r['rss_kb'] / 1024:.0f} MiB.")
PYEOF
cat "$WORK/report.md"

if [ "${UPDATE_DOCS:-0}" = 1 ]; then
    tag=many-files
    [ "$FILES" -ge 1000000 ] || tag=many-files-smoke
    python3 - "$ROOT/docs/BENCHMARKS.md" "$tag" "$WORK/report.md" <<'PYEOF'
import sys
path, tag, report = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
doc = open(path).read()
if begin in doc and end in doc:
    doc = doc[:doc.index(begin) + len(begin)] + "\n" + report + "\n" + doc[doc.index(end):]
else:
    doc = doc.rstrip("\n") + f"\n\n{begin}\n{report}\n{end}\n"
open(path, "w").write(doc)
PYEOF
fi

#!/usr/bin/env bash
# Whole-process comparison of coffer with restic, borg and rustic.
#
# Builds three datasets once (kept in $WORK/data and reused by later runs):
#   source  ~15,000 real source files (cargo registry sources, then the Python stdlib),
#           in 16 folders part-00..part-15; the change edits 1% of the files in the
#           middle, adds 20 and deletes 20; subfolder restore: part-05 (~1/16).
#   pg      a plain-SQL pg_dump (~500 MB) of a pgbench database, before and after a
#           pgbench run of PG_TXNS transactions, as db/pgbench.sql; subfolder
#           restore: db/, which is the whole dataset (one file) restored through each
#           tool's path selector.
#   large   ~1 GiB of 16 large files mixing random and text-like data; the change
#           overwrites 1 MiB in the middle of one file and inserts 4 MiB at the front
#           of another; subfolder restore: exports/ (1/16).
# and runs, for each repetition and dataset, each tool in a rotating order (rep 1:
# coffer restic borg rustic, rep 2: restic borg rustic coffer, ...):
#   init, backup (first), backup (unchanged, warm cache), backup (after the change),
#   restore (full, latest), restore (subfolder), check with a full data read,
# measuring wall time and peak RSS of each with /usr/bin/time, and the repository
# size (du -sb) after the third backup. Every tool backs up the same absolute path,
# $WORK/src/DATASET, which holds a fresh copy of the "before" tree for the first two
# backups and is brought to the "after" tree with rsync for the third. Full restores
# are verified against the "after" tree (content, names, permission bits) in rep 1
# (every rep with VERIFY=all); a wrong restore stops the run.
# Also times `tar c DATA | zstd -3 -T0` on the "before" tree, as a throughput yardstick.
#
# Raw results: $WORK/results.jsonl (one JSON object per measurement); report:
# $WORK/report.md (printed at the end), also docs/BENCHMARKS.md with UPDATE_DOCS=1.
#
# Run:   bash benches/compare.sh                       # full run (hours; see docs/BENCHMARKS.md)
#        QUICK=1 REPS=1 bash benches/compare.sh        # smoke test with tiny datasets (minutes)
#        UPDATE_DOCS=1 bash benches/compare.sh         # and write docs/BENCHMARKS.md
#
# Environment:
#   WORK        work directory (default /tmp/coffer-compare, or /tmp/coffer-compare-quick
#               with QUICK=1); needs ~30 GB free for the full datasets (nothing is
#               deleted during a repetition, see discard below)
#   REPS        repetitions (default 3); medians are reported
#   DATASETS    datasets to run (default "source pg large")
#   TOOLS       tools to run (default "coffer restic borg rustic"). A tool that is not
#               installed is installed (restic, borg: apt-get; rustic: cargo install
#               rustic-rs --locked); leave a tool out of TOOLS to skip it
#   COFFER_BIN  coffer binary to use; if unset, `cargo build --release --locked` is run
#               and target/release/coffer is used
#   QUICK=1     tiny datasets: 500 source files, pgbench scale 2 (~20 MB dump),
#               LARGE_MB=48
#   SOURCE_FILES, PG_SCALE, PG_TXNS, LARGE_MB   dataset sizes (defaults 15000, 52,
#               5000, 1024; QUICK: 500, 2, 500, 48)
#   REBUILD=1   rebuild the datasets even if $WORK/data holds them with the same sizes
#   VERIFY      "first" (default: verify restores in rep 1) or "all"
#   BORG_COMPRESSION  borg --compression value (default: none given, i.e. borg's own
#               default, lz4)
#   TIMED_SYNC=1  run `sync` inside each timed step (charges the page-cache write-back
#               to the tool that caused it); by default `sync` runs, untimed, before
#               each step
#   KEEP=1      keep repositories, caches and restores (default: deleted after each
#               tool's steps, to bound the disk space needed)
#   UPDATE_DOCS=1  also write docs/BENCHMARKS.md
#
# Nothing is dropped from the page cache (that needs root): the data was just written
# or read, so every tool reads it warm, as a nightly run on a machine with spare
# memory would.
set -euo pipefail

# The command as given: the settings from the environment, then the script.
COMMAND_LINE="$(
    for v in QUICK REPS DATASETS TOOLS SOURCE_FILES PG_SCALE PG_TXNS LARGE_MB VERIFY \
        BORG_COMPRESSION TIMED_SYNC UPDATE_DOCS; do
        if [ -n "${!v+x}" ]; then printf "%s='%s' " "$v" "${!v}"; fi
    done
    printf 'bash benches/compare.sh'
)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
    WORK="${WORK:-/tmp/coffer-compare-quick}"
    SOURCE_FILES="${SOURCE_FILES:-500}"
    PG_SCALE="${PG_SCALE:-2}"
    PG_TXNS="${PG_TXNS:-500}"
    LARGE_MB="${LARGE_MB:-48}"
    NEED_GB=1
else
    WORK="${WORK:-/tmp/coffer-compare}"
    SOURCE_FILES="${SOURCE_FILES:-15000}"
    PG_SCALE="${PG_SCALE:-52}" # plain pg_dump of pgbench: ~9.5 MB per scale unit (PG 15)
    PG_TXNS="${PG_TXNS:-5000}"
    LARGE_MB="${LARGE_MB:-1024}"
    NEED_GB=30
fi
REPS="${REPS:-3}"
DATASETS="${DATASETS:-source pg large}"
TOOLS_EXPLICIT="${TOOLS+set}"
TOOLS="${TOOLS:-coffer restic borg rustic}"
VERIFY="${VERIFY:-first}"
TIMED_SYNC="${TIMED_SYNC:-0}"
KEEP="${KEEP:-0}"
REBUILD="${REBUILD:-0}"
UPDATE_DOCS="${UPDATE_DOCS:-0}"
BORG_COMPRESSION="${BORG_COMPRESSION:-}"
PASSWORD="coffer-bench-password"
PY="python3"
DATA_PY="$HERE/compare_data.py"

export PATH="$HOME/.cargo/bin:$PATH"
# Passwords come from the *_PASSWORD variables set per tool below, nothing else.
unset COFFER_PASSWORD_FILE COFFER_PASSWORD_COMMAND RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND \
    BORG_PASSCOMMAND BORG_PASSPHRASE_FD RUSTIC_PASSWORD_FILE RUSTIC_PASSWORD_COMMAND

# shellcheck source=benches/common.sh
. "$HERE/common.sh"

# --------------------------------------------------------------------------- tools

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root (or sudo) to run: $*"
    fi
}

apt_install() { # packages...
    log "installing from Debian's packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_tools() {
    local missing=()
    [ -x /usr/bin/time ] || missing+=(time)
    command -v zstd >/dev/null || missing+=(zstd)
    command -v rsync >/dev/null || missing+=(rsync)
    for t in $TOOLS; do
        case "$t" in
        restic) command -v restic >/dev/null || missing+=(restic) ;;
        borg) command -v borg >/dev/null || missing+=(borgbackup) ;;
        coffer | rustic) ;;
        *) die "unknown tool '$t' in TOOLS (coffer restic borg rustic)" ;;
        esac
    done
    if [[ " $DATASETS " == *" pg "* ]] && ! command -v pgbench >/dev/null; then
        missing+=(postgresql postgresql-contrib)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
    if [[ " $TOOLS " == *" rustic "* ]] && ! command -v rustic >/dev/null; then
        command -v cargo >/dev/null || die "rustic is not installed and cargo is missing (install Rust, or leave rustic out of TOOLS)"
        log "installing rustic: cargo install rustic-rs --locked (takes a while)"
        cargo install rustic-rs --locked >&2 || die "cargo install rustic-rs failed"
    fi
    find_coffer
    export COFFER BORG_COMPRESSION
    if [ -z "$TOOLS_EXPLICIT" ]; then
        for t in restic borg rustic; do
            command -v "$t" >/dev/null || die "$t is missing after installation; set TOOLS= to run without it"
        done
    fi
}

tool_version() {
    case "$1" in
    coffer)
        # the binary's version and the commit of the tree it was (or should have been)
        # built from; with COFFER_BIN the two may differ
        echo "$("$COFFER" --version) ($([ -n "${COFFER_BIN:-}" ] && echo "COFFER_BIN, ")source $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
        ;;
    restic) restic version ;;
    borg) borg --version ;;
    rustic) rustic --version ;;
    tar_zstd) echo "$(tar --version | head -1); $(zstd --version)" ;;
    esac 2>/dev/null | head -1
}

# ------------------------------------------------------------------------ datasets

data_stamp() { # dataset
    case "$1" in
    source) echo "source files=$SOURCE_FILES v1" ;;
    pg) echo "pg scale=$PG_SCALE txns=$PG_TXNS v1" ;;
    large) echo "large mb=$LARGE_MB v1" ;;
    esac
}

subfolder_of() { # dataset -> path of the subfolder, relative to the dataset root
    case "$1" in
    source) echo part-05 ;;
    pg) echo db ;;
    large) echo exports ;;
    esac
}

source_roots() {
    local roots=()
    for d in "$HOME"/.cargo/registry/src/*/; do [ -d "$d" ] && roots+=("$d"); done
    roots+=("$($PY -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')")
    for d in /usr/lib/python3.*/; do [ -d "$d" ] && roots+=("$d"); done
    printf '%s\n' "${roots[@]}"
}

PG_DIR=""
stop_pg() {
    if [ -n "$PG_DIR" ]; then
        bash "$ROOT/scripts/pg_server.sh" stop "$PG_DIR" || true
        PG_DIR=""
    fi
}
trap stop_pg EXIT

build_dataset() { # dataset
    local ds="$1" dir="$WORK/data/$1"
    if [ "$REBUILD" != 1 ] && [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$(data_stamp "$ds")" ]; then
        log "dataset $ds: reusing $dir"
        return
    fi
    log "dataset $ds: building in $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    case "$ds" in
    source)
        mapfile -t roots < <(source_roots)
        $PY "$DATA_PY" source "$dir/before" --files "$SOURCE_FILES" "${roots[@]}" >"$dir/build.json"
        cp -a "$dir/before" "$dir/after"
        $PY "$DATA_PY" source-change "$dir/after" >"$dir/change.json"
        ;;
    pg)
        PG_DIR="$WORK/pg-server"
        rm -rf "$PG_DIR"
        eval "$(bash "$ROOT/scripts/pg_server.sh" start "$PG_DIR")"
        mkdir -p "$dir/before/db" "$dir/after/db"
        createdb bench
        log "pgbench -i -s $PG_SCALE"
        pgbench -i -q -s "$PG_SCALE" bench >"$dir/pgbench-init.log" 2>&1
        pg_dump -d bench -f "$dir/before/db/pgbench.sql"
        log "pgbench: $PG_TXNS transactions"
        pgbench -c 2 -j 2 -t $((PG_TXNS / 2)) bench >"$dir/pgbench-run.log" 2>&1
        pg_dump -d bench -f "$dir/after/db/pgbench.sql"
        stop_pg
        echo "{\"scale\": $PG_SCALE, \"transactions\": $PG_TXNS}" >"$dir/build.json"
        ;;
    large)
        $PY "$DATA_PY" large "$dir/before" --mb "$LARGE_MB" >"$dir/build.json"
        cp -a "$dir/before" "$dir/after"
        $PY "$DATA_PY" large-change "$dir/after" >"$dir/change.json"
        ;;
    *) die "unknown dataset '$ds' in DATASETS (source pg large)" ;;
    esac
    $PY "$DATA_PY" stats "$dir/before" >"$dir/before.stats.json"
    $PY "$DATA_PY" stats "$dir/after" >"$dir/after.stats.json"
    $PY "$DATA_PY" stats "$dir/after/$(subfolder_of "$ds")" >"$dir/sub.stats.json"
    $PY "$DATA_PY" treehash "$dir/after" >"$dir/after.treehash"
    $PY "$DATA_PY" treehash "$dir/after/$(subfolder_of "$ds")" >"$dir/sub.treehash"
    data_stamp "$ds" >"$dir/stamp"
}

# --------------------------------------------------------------------- measurement

# Moves files out of the way without deleting them. ext4 does not reuse the inodes of
# files deleted in the last minute: creating files then scans the inode bitmaps and
# tables (perf: find_get_block_common, recently_deleted, __brelse), and a restore of
# 15,000 files right after another tool's 15,000 were deleted took 4-7 s instead of
# 0.7-1.6 s, for every tool, depending on its place in the order. So nothing is deleted
# while tools run: what a step leaves goes to $WORK/trash, which is emptied after each
# repetition, followed by a minute's pause.
discard() { # paths...
    local path
    mkdir -p "$WORK/trash"
    for path in "$@"; do
        if [ -e "$path" ]; then mv "$path" "$WORK/trash/$(date +%s%N)-$RANDOM"; fi
    done
}

empty_trash() {
    if [ -d "$WORK/trash" ]; then
        log "emptying $WORK/trash, then a 60 s pause so ext4 reuses the freed inodes"
        rm -rf "$WORK/trash"
        sync
        sleep 60
    fi
}

# Brings $WORK/src/DATASET to the "before" state: a fresh copy (new inodes, so no tool
# can reuse another's file cache), then a pause so no file is within a second of the
# next backup's start.
src_before() { # dataset
    local src="$WORK/src/$1"
    discard "$src"
    mkdir -p "$WORK/src"
    cp -a "$WORK/data/$1/before" "$src"
    sync
    sleep 1.1
}

src_after() { # dataset
    rsync -a --delete "$WORK/data/$1/after/" "$WORK/src/$1/"
    sync
    sleep 1.1
}

RESULTS=""
ORDER_POS=0
# measure TOOL DATASET REP STEP -- command...: runs the command under /usr/bin/time,
# appends one JSON line to results.jsonl; a failing command stops the run.
measure() {
    local tool="$1" ds="$2" rep="$3" step="$4"
    shift 5
    local logf="$WORK/logs/$ds.$rep.$tool.$step.log" tf="$WORK/logs/time.out"
    local rc=0 wall rss
    sync
    # The step runs in a child bash (the do_* functions are exported); GNU time's peak
    # RSS is the largest of that process tree, i.e. the tool's.
    if [ "$TIMED_SYNC" = 1 ]; then
        /usr/bin/time -f '%e %M' -o "$tf" bash -c '"$@" && sync' _ "$@" >"$logf" 2>&1 </dev/null || rc=$?
    else
        /usr/bin/time -f '%e %M' -o "$tf" bash -c '"$@"' _ "$@" >"$logf" 2>&1 </dev/null || rc=$?
    fi
    # borg exits 1 for warnings (e.g. a file changed while read): recorded, not fatal
    if [ "$rc" != 0 ] && ! { [ "$tool" = borg ] && [ "$rc" = 1 ]; }; then
        echo "---- $logf" >&2
        tail -20 "$logf" >&2
        die "$tool $step on $ds (rep $rep) failed with exit code $rc: $*"
    fi
    read -r wall rss < <(tail -1 "$tf")
    printf '{"rep": %d, "dataset": "%s", "tool": "%s", "step": "%s", "wall_s": %s, "rss_kb": %s, "rc": %d, "order": %d}\n' \
        "$rep" "$ds" "$tool" "$step" "$wall" "$rss" "$rc" "$ORDER_POS" >>"$RESULTS"
    log "  $ds rep $rep $tool $step: ${wall}s, $((rss / 1024)) MiB"
}

record() { # tool dataset rep step key value
    printf '{"rep": %d, "dataset": "%s", "tool": "%s", "step": "%s", "%s": %s}\n' \
        "$3" "$2" "$1" "$4" "$5" "$6" >>"$RESULTS"
}

# Per-tool commands. Each tool gets its own repository and cache for each
# (dataset, rep) under $WORK/run/. restore_* print where the restored copy of the
# dataset (full) or of the subfolder (sub) ended up below the restore target.
tool_env() { # tool dataset rep
    local base="$WORK/run/$2.$3.$1"
    REPO="$base/repo"
    CACHE="$base/cache"
    RESTORE="$base/restore"
    mkdir -p "$CACHE"
    case "$1" in
    coffer) export COFFER_REPOSITORY="$REPO" COFFER_PASSWORD="$PASSWORD" COFFER_CACHE_DIR="$CACHE" ;;
    restic) export RESTIC_REPOSITORY="$REPO" RESTIC_PASSWORD="$PASSWORD" RESTIC_CACHE_DIR="$CACHE" ;;
    borg) export BORG_REPO="$REPO" BORG_PASSPHRASE="$PASSWORD" BORG_BASE_DIR="$CACHE" ;;
    rustic) export RUSTIC_REPOSITORY="$REPO" RUSTIC_PASSWORD="$PASSWORD" RUSTIC_CACHE_DIR="$CACHE" ;;
    esac
}

do_init() {
    case "$1" in
    coffer) "$COFFER" -q init ;;
    restic) restic -q init ;;
    borg) borg init -e repokey-blake2 ;;
    rustic) rustic --no-progress init ;;
    esac
}

do_backup() { # tool path n
    case "$1" in
    coffer) "$COFFER" -q backup "$2" ;;
    restic) restic -q backup "$2" ;;
    borg)
        if [ -n "$BORG_COMPRESSION" ]; then
            borg create --compression "$BORG_COMPRESSION" "::b$3" "$2"
        else
            borg create "::b$3" "$2"
        fi
        ;;
    rustic) rustic --no-progress backup "$2" ;;
    esac
}

do_restore_full() { # tool src target
    mkdir -p "$3"
    case "$1" in
    coffer) "$COFFER" -q restore latest --target "$3" ;;
    restic) restic -q restore latest --target "$3" ;;
    borg) (cd "$3" && borg extract ::b3) ;;
    rustic) rustic --no-progress restore latest "$3" ;;
    esac
}

full_restored_at() { # tool src target
    echo "$3$2"
}

do_restore_sub() { # tool src sub target
    mkdir -p "$4"
    case "$1" in
    coffer) "$COFFER" -q restore "latest:$2/$3" --target "$4" ;;
    # restic 0.14 (Debian 12) has no SNAP:PATH syntax; --include works in every version
    restic) restic -q restore latest --include "$2/$3" --target "$4" ;;
    borg) (cd "$4" && borg extract ::b3 "${2#/}/$3") ;;
    rustic) rustic --no-progress restore "latest:$2/$3" "$4" ;;
    esac
}

sub_restored_at() { # tool src sub target
    case "$1" in
    coffer | rustic) echo "$4" ;;
    restic | borg) echo "$4$2/$3" ;;
    esac
}

do_check() {
    case "$1" in
    coffer) "$COFFER" -q check --read-data ;;
    restic) restic -q check --read-data ;;
    borg) borg check --verify-data ;;
    rustic) rustic --no-progress check --read-data ;;
    esac
}

export -f do_init do_backup do_restore_full do_restore_sub do_check

verify_tree() { # what dir expected_hash_file
    local got want
    [ -d "$2" ] || die "$1: restored tree $2 is missing"
    got="$($PY "$DATA_PY" treehash "$2")"
    want="$(cat "$3")"
    if [ "$got" != "$want" ]; then
        die "$1: restored tree $2 differs from the backed-up data (tree hash $got, want $want)"
    fi
    log "  $1: restored data verified"
}

run_tool() { # tool dataset rep
    local tool="$1" ds="$2" rep="$3"
    local src="$WORK/src/$ds" sub
    sub="$(subfolder_of "$ds")"
    tool_env "$tool" "$ds" "$rep"
    discard "$REPO" "$RESTORE"
    src_before "$ds"
    measure "$tool" "$ds" "$rep" init -- do_init "$tool"
    measure "$tool" "$ds" "$rep" backup_first -- do_backup "$tool" "$src" 1
    measure "$tool" "$ds" "$rep" backup_unchanged -- do_backup "$tool" "$src" 2
    src_after "$ds"
    measure "$tool" "$ds" "$rep" backup_changed -- do_backup "$tool" "$src" 3
    record "$tool" "$ds" "$rep" repo_size bytes "$(du -sb "$REPO" | cut -f1)"
    record "$tool" "$ds" "$rep" cache_size bytes "$(du -sb "$CACHE" | cut -f1)"
    measure "$tool" "$ds" "$rep" restore_full -- do_restore_full "$tool" "$src" "$RESTORE/full"
    measure "$tool" "$ds" "$rep" restore_sub -- do_restore_sub "$tool" "$src" "$sub" "$RESTORE/sub"
    if [ "$VERIFY" = all ] || [ "$rep" = 1 ]; then
        verify_tree "$tool full restore" "$(full_restored_at "$tool" "$src" "$RESTORE/full")" "$WORK/data/$ds/after.treehash"
        verify_tree "$tool subfolder restore" "$(sub_restored_at "$tool" "$src" "$sub" "$RESTORE/sub")" "$WORK/data/$ds/sub.treehash"
    fi
    discard "$RESTORE"
    measure "$tool" "$ds" "$rep" check_read_data -- do_check "$tool"
    if [ "$KEEP" != 1 ]; then discard "$REPO" "$CACHE"; fi
    ORDER_POS=$((ORDER_POS + 1))
}

run_tar_zstd() { # dataset rep
    local ds="$1" rep="$2" out="$WORK/logs/tar_zstd.size"
    src_before "$ds"
    measure tar_zstd "$ds" "$rep" backup_first -- \
        bash -c 'tar c -C "$1" . | zstd -3 -T0 -q -c | wc -c >"$2"' _ "$WORK/src/$ds" "$out"
    record tar_zstd "$ds" "$rep" repo_size bytes "$(cat "$out")"
}

# ---------------------------------------------------------------------------- main

main() {
    mkdir -p "$WORK"
    local free_gb
    free_gb=$(($(df -Pk "$WORK" | awk 'NR==2 {print $4}') / 1024 / 1024))
    if [ ! -f "$WORK/data/large/stamp" ] && [ "$free_gb" -lt "$NEED_GB" ]; then
        die "$WORK has ${free_gb} GB free, ${NEED_GB} GB needed (set WORK= elsewhere)"
    fi
    ensure_tools
    mkdir -p "$WORK/logs" "$WORK/run" "$WORK/data"
    RESULTS="$WORK/results.jsonl"
    : >"$RESULTS"

    for ds in $DATASETS; do build_dataset "$ds"; done

    # What the report needs besides the measurements.
    local t
    for t in $TOOLS tar_zstd; do tool_version "$t" >"$WORK/logs/version.$t"; done
    COMMAND_LINE="$COMMAND_LINE" QUICK="$QUICK" REPS="$REPS" TOOLS="$TOOLS" DATASETS="$DATASETS" \
        TIMED_SYNC="$TIMED_SYNC" BORG_COMPRESSION="$BORG_COMPRESSION" WORK="$WORK" \
        SUBFOLDERS="$(for ds in $DATASETS; do printf '%s=%s ' "$ds" "$(subfolder_of "$ds")"; done)" \
        $PY - >"$WORK/meta.json" <<'PYEOF'
import json, os, platform, shutil, subprocess, time
env = os.environ
work = env["WORK"]
def read(p, default=""):
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return default
cpu = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
            if l.startswith("model name")), platform.processor())
mem = int(next(l.split()[1] for l in read("/proc/meminfo").splitlines() if l.startswith("MemTotal")))
osname = next((l.split("=", 1)[1].strip('"') for l in read("/etc/os-release").splitlines()
               if l.startswith("PRETTY_NAME=")), "")
fs = subprocess.run(["df", "-PT", work], capture_output=True, text=True).stdout.splitlines()[1].split()[1]
subs = dict(x.split("=", 1) for x in env["SUBFOLDERS"].split())
datasets = {}
for ds in env["DATASETS"].split():
    d = os.path.join(work, "data", ds)
    datasets[ds] = {
        "subfolder": subs[ds],
        "before": json.loads(read(f"{d}/before.stats.json", "{}")),
        "after": json.loads(read(f"{d}/after.stats.json", "{}")),
        "sub": json.loads(read(f"{d}/sub.stats.json", "{}")),
        "build": json.loads(read(f"{d}/build.json", "{}")),
        "change": json.loads(read(f"{d}/change.json", "{}")),
    }
tools = env["TOOLS"].split()
print(json.dumps({
    "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "command": env["COMMAND_LINE"],
    "quick": env["QUICK"] == "1",
    "reps": int(env["REPS"]),
    "tools": tools,
    "datasets": env["DATASETS"].split(),
    "timed_sync": env["TIMED_SYNC"] == "1",
    "borg_compression": env["BORG_COMPRESSION"] or "borg's default (lz4)",
    "versions": {t: read(f"{work}/logs/version.{t}") for t in tools + ["tar_zstd"]},
    "machine": {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 1024 / 1024, 1),
                "kernel": platform.release(), "fs": fs, "os": osname},
    "datasets_info": datasets,
}, indent=1))
PYEOF

    local tools_arr
    read -r -a tools_arr <<<"$TOOLS"
    local n="${#tools_arr[@]}"
    for rep in $(seq 1 "$REPS"); do
        for ds in $DATASETS; do
            log "rep $rep/$REPS, dataset $ds"
            run_tar_zstd "$ds" "$rep"
            for i in $(seq 0 $((n - 1))); do
                run_tool "${tools_arr[$(((i + rep - 1) % n))]}" "$ds" "$rep"
            done
        done
        discard "$WORK/src"
        empty_trash
    done

    local docs_args=()
    [ "$UPDATE_DOCS" = 1 ] && docs_args=(--docs "$ROOT/docs/BENCHMARKS.md")
    $PY "$HERE/compare_report.py" "$WORK" --out "$WORK/report.md" "${docs_args[@]}"
    cat "$WORK/report.md"
}

main

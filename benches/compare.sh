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
# Also times `tar c DATA | zstd -3 -T0` on the "before" tree, as a throughput yardstick,
# and `cp -a` of the "after" tree from the page cache into the same file system (with
# and without a final `sync`), as the physical proxy of a full restore; and coffer's
# full restore once more with --no-sync, to show what its final sync costs.
#
# S3 (BACKENDS): the same steps for coffer, restic and rustic against one s3s-fs on
# loopback shared by all, through benches/s3_proxy.py, which counts requests and bytes
# each way per step; once as it is ("s3") and once with S3_DELAY_MS of latency added
# in each direction ("s3+20ms"), which is what `tc ... netem delay 20ms` on `lo` would
# do (the kernel here has no netem). borg has no S3 backend.
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
#   BACKENDS    "local", "s3" and/or "s3-latency" (default all three)
#   S3_DATASETS datasets run on S3 (default "source large")
#   S3_TOOLS    tools run on S3 (default "coffer restic rustic": those of TOOLS that
#               have an S3 backend)
#   S3_DELAY_MS latency added in each direction for "s3-latency" (default 20)
#
# Nothing is dropped from the page cache (that needs root): the data was just written
# or read, so every tool reads it warm, as a nightly run on a machine with spare
# memory would.
set -euo pipefail

# The command as given: the settings from the environment, then the script.
COMMAND_LINE="$(
    for v in QUICK REPS DATASETS TOOLS SOURCE_FILES PG_SCALE PG_TXNS LARGE_MB VERIFY \
        BORG_COMPRESSION TIMED_SYNC UPDATE_DOCS BACKENDS S3_DATASETS S3_TOOLS S3_DELAY_MS; do
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
BACKENDS="${BACKENDS:-local s3 s3-latency}"
S3_DATASETS="${S3_DATASETS:-source large}"
S3_DELAY_MS="${S3_DELAY_MS:-20}"
S3_TOOLS="${S3_TOOLS:-$(for t in $TOOLS; do [ "$t" = borg ] || printf '%s ' "$t"; done)}"
S3_TOOLS="${S3_TOOLS% }"
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
    cp_a) cp --version ;;
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

# ---------------------------------------------------------------------------- S3

# One s3s-fs for every tool, and a counting proxy in front of it per S3 backend.
S3_DIR=""
S3_ENDPOINT_s3=""
S3_ENDPOINT_s3_latency=""
S3_PROXY_PIDS=()
BACKEND=local
start_s3() {
    S3_DIR="$WORK/s3-server"
    rm -rf "$S3_DIR"
    mkdir -p "$S3_DIR"
    eval "$(bash "$ROOT/scripts/s3_server.sh" start "$S3_DIR")"
    local backend port delay
    for backend in s3 s3-latency; do
        [[ " $BACKENDS " == *" $backend "* ]] || continue
        delay=0
        [ "$backend" = s3-latency ] && delay="$S3_DELAY_MS"
        port="$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        $PY "$HERE/s3_proxy.py" --listen "$port" --to "${AWS_ENDPOINT_URL#http://}" \
            --stats "$S3_DIR/proxy-$backend.json" --delay-ms "$delay" 2>"$S3_DIR/proxy-$backend.log" &
        S3_PROXY_PIDS+=($!)
        for _ in $(seq 1 50); do [ -f "$S3_DIR/proxy-$backend.json" ] && break; sleep 0.1; done
        [ -f "$S3_DIR/proxy-$backend.json" ] || die "the S3 proxy for $backend did not start"
        case "$backend" in
        s3) S3_ENDPOINT_s3="http://127.0.0.1:$port" ;;
        s3-latency) S3_ENDPOINT_s3_latency="http://127.0.0.1:$port" ;;
        esac
        log "S3: $backend through http://127.0.0.1:$port (latency ${delay} ms each way) to $AWS_ENDPOINT_URL"
    done
}

stop_s3() {
    local pid
    for pid in "${S3_PROXY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    S3_PROXY_PIDS=()
    if [ -n "$S3_DIR" ]; then
        bash "$ROOT/scripts/s3_server.sh" stop "$S3_DIR" || true
    fi
}

# The proxy counters of the current backend: "requests bytes_up bytes_down".
proxy_counts() {
    local stats="$S3_DIR/proxy-$BACKEND.json" pid
    case "$BACKEND" in
    s3) pid="${S3_PROXY_PIDS[0]}" ;;
    s3-latency) pid="${S3_PROXY_PIDS[-1]}" ;;
    esac
    rm -f "$stats"
    kill -USR1 "$pid"
    for _ in $(seq 1 100); do [ -s "$stats" ] && break; sleep 0.02; done
    $PY -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["requests"], d["bytes_up"], d["bytes_down"])' "$stats"
}

# CPU seconds (user + system) the S3 server and the proxies have used so far: what a
# step costs the storage side, which runs on the same two cores as the tool.
server_cpu() {
    local pids=("$(cat "$S3_DIR/pid")" "${S3_PROXY_PIDS[@]}")
    $PY -c 'import os, sys
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
print("%.2f %.2f" % (cpu(sys.argv[1]), sum(cpu(p) for p in sys.argv[2:])))' "${pids[@]}"
}

# The key results are filed under: the dataset, with the backend for S3.
result_key() { # dataset
    case "$BACKEND" in
    local) echo "$1" ;;
    s3) echo "$1@s3" ;;
    s3-latency) echo "$1@s3+${S3_DELAY_MS}ms" ;;
    esac
}

PG_DIR=""
stop_pg() {
    if [ -n "$PG_DIR" ]; then
        bash "$ROOT/scripts/pg_server.sh" stop "$PG_DIR" || true
        PG_DIR=""
    fi
}
trap 'stop_pg; stop_s3' EXIT

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
    local rc=0 wall rss before="" after=""
    sync
    local cpu_before=""
    if [ "$BACKEND" != local ]; then
        before="$(proxy_counts)"
        cpu_before="$(server_cpu)"
    fi
    # The step runs in a child bash (the do_* functions are exported); GNU time's peak
    # RSS is the largest of that process tree, i.e. the tool's.
    if [ "$TIMED_SYNC" = 1 ]; then
        /usr/bin/time -f '%e %M' -o "$tf" bash -c '"$@" && sync' _ "$@" >"$logf" 2>&1 </dev/null || rc=$?
    else
        /usr/bin/time -f '%e %M' -o "$tf" bash -c '"$@"' _ "$@" >"$logf" 2>&1 </dev/null || rc=$?
    fi
    # borg exits 1 for warnings (e.g. a file changed while read): recorded, not fatal.
    # A peer's failure on S3 is recorded and reported (restic 0.14 cannot list the
    # packs of its repository on s3s-fs, so its check fails there); coffer's stops the run.
    if [ "$rc" != 0 ] && [ "$BACKEND" != local ] && [ "$tool" != coffer ]; then
        log "  $(result_key "$ds") rep $rep $tool $step FAILED (exit code $rc): $(tail -1 "$logf")"
        printf '{"rep": %d, "dataset": "%s", "tool": "%s", "step": "%s", "failed": true, "rc": %d}\n' \
            "$rep" "$(result_key "$ds")" "$tool" "$step" "$rc" >>"$RESULTS"
        return 0
    fi
    if [ "$rc" != 0 ] && ! { [ "$tool" = borg ] && [ "$rc" = 1 ]; }; then
        echo "---- $logf" >&2
        tail -20 "$logf" >&2
        die "$tool $step on $ds (rep $rep) failed with exit code $rc: $*"
    fi
    read -r wall rss < <(tail -1 "$tf")
    local traffic=""
    if [ "$BACKEND" != local ]; then
        after="$(proxy_counts)"
        traffic="$($PY -c 'import sys; b = list(map(int, sys.argv[1].split())); a = list(map(int, sys.argv[2].split()))
cb = list(map(float, sys.argv[3].split())); ca = list(map(float, sys.argv[4].split()))
print(", \"requests\": %d, \"bytes_up\": %d, \"bytes_down\": %d" % tuple(y - x for x, y in zip(b, a))
      + ", \"server_cpu_s\": %.2f, \"proxy_cpu_s\": %.2f" % tuple(y - x for x, y in zip(cb, ca)))' \
            "$before" "$after" "$cpu_before" "$(server_cpu)")"
    fi
    printf '{"rep": %d, "dataset": "%s", "tool": "%s", "step": "%s", "wall_s": %s, "rss_kb": %s, "rc": %d, "order": %d%s}\n' \
        "$rep" "$(result_key "$ds")" "$tool" "$step" "$wall" "$rss" "$rc" "$ORDER_POS" "$traffic" >>"$RESULTS"
    log "  $(result_key "$ds") rep $rep $tool $step: ${wall}s, $((rss / 1024)) MiB${traffic:+ $traffic}"
}

record() { # tool dataset rep step key value
    printf '{"rep": %d, "dataset": "%s", "tool": "%s", "step": "%s", "%s": %s}\n' \
        "$3" "$(result_key "$2")" "$1" "$4" "$5" "$6" >>"$RESULTS"
}

# Per-tool commands. Each tool gets its own repository and cache for each
# (dataset, rep) under $WORK/run/. restore_* print where the restored copy of the
# dataset (full) or of the subfolder (sub) ended up below the restore target.
tool_env() { # tool dataset rep
    local base="$WORK/run/$2.$3.$1.$BACKEND"
    REPO="$base/repo"
    CACHE="$base/cache"
    RESTORE="$base/restore"
    mkdir -p "$CACHE"
    unset RUSTIC_USE_PROFILE RUSTIC_REPOSITORY
    local url=""
    if [ "$BACKEND" != local ]; then
        # a bucket per tool, dataset, repetition and backend; its folder in the
        # server's data is what the repository size is taken from
        local bucket="b-$2-$3-$1-$BACKEND"
        REPO="$COFFER_TEST_S3_DATA/$bucket"
        case "$BACKEND" in
        s3) url="$S3_ENDPOINT_s3" ;;
        s3-latency) url="$S3_ENDPOINT_s3_latency" ;;
        esac
        export AWS_ENDPOINT_URL="$url"
        case "$1" in
        coffer) export COFFER_REPOSITORY="s3://$bucket/repo" ;;
        restic) export RESTIC_REPOSITORY="s3:$url/$bucket/repo" ;;
        rustic)
            # rustic takes backend options from a profile file only (-P PATH reads PATH.toml)
            mkdir -p "$base"
            cat >"$base/rustic-s3.toml" <<TOML
[repository]
repository = "opendal:s3"
[repository.options]
bucket = "$bucket"
root = "/repo"
endpoint = "$url"
region = "$AWS_REGION"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
TOML
            export RUSTIC_USE_PROFILE="$base/rustic-s3"
            ;;
        esac
    fi
    case "$1" in
    coffer)
        [ -n "$url" ] || export COFFER_REPOSITORY="$REPO"
        export COFFER_PASSWORD="$PASSWORD" COFFER_CACHE_DIR="$CACHE"
        ;;
    restic)
        [ -n "$url" ] || export RESTIC_REPOSITORY="$REPO"
        export RESTIC_PASSWORD="$PASSWORD" RESTIC_CACHE_DIR="$CACHE"
        ;;
    borg) export BORG_REPO="$REPO" BORG_PASSPHRASE="$PASSWORD" BORG_BASE_DIR="$CACHE" ;;
    rustic)
        [ -n "$url" ] || export RUSTIC_REPOSITORY="$REPO"
        export RUSTIC_PASSWORD="$PASSWORD" RUSTIC_CACHE_DIR="$CACHE"
        ;;
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
    # on S3 the repository folder is the tool's bucket in the server's data
    [ "$BACKEND" = local ] || mkdir -p "$REPO"
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
    if [ "$tool" = coffer ] && [ "$BACKEND" = local ]; then
        # what the final sync costs: the same restore without it
        measure "$tool" "$ds" "$rep" restore_full_nosync -- "$COFFER" -q restore latest --no-sync --target "$RESTORE/nosync"
    fi
    if [ "$VERIFY" = all ] || [ "$rep" = 1 ]; then
        verify_tree "$tool full restore" "$(full_restored_at "$tool" "$src" "$RESTORE/full")" "$WORK/data/$ds/after.treehash"
        verify_tree "$tool subfolder restore" "$(sub_restored_at "$tool" "$src" "$sub" "$RESTORE/sub")" "$WORK/data/$ds/sub.treehash"
    fi
    discard "$RESTORE"
    measure "$tool" "$ds" "$rep" check_read_data -- do_check "$tool"
    if [ "$KEEP" != 1 ]; then discard "$REPO" "$CACHE"; fi
    ORDER_POS=$((ORDER_POS + 1))
}

# The physical proxy of a full restore: the "after" tree, just written and so in the
# page cache, copied by `cp -a` into the same file system; once as it is and once with
# a `sync` in the timed step (coffer's restore ends with one).
run_cp() { # dataset rep
    local ds="$1" rep="$2"
    src_before "$ds"
    src_after "$ds"
    measure cp_a "$ds" "$rep" restore_full -- cp -a "$WORK/src/$ds" "$WORK/cp-$rep-$ds-plain"
    measure cp_a_sync "$ds" "$rep" restore_full -- bash -c 'cp -a "$1" "$2" && sync' _ "$WORK/src/$ds" "$WORK/cp-$rep-$ds-sync"
    discard "$WORK/cp-$rep-$ds-plain" "$WORK/cp-$rep-$ds-sync"
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

    ALL_DATASETS="$(for ds in $DATASETS $S3_DATASETS; do echo "$ds"; done | awk '!seen[$0]++' | tr '\n' ' ')"
    for ds in $ALL_DATASETS; do build_dataset "$ds"; done

    # What the report needs besides the measurements.
    local t
    for t in $TOOLS tar_zstd cp_a; do tool_version "$t" >"$WORK/logs/version.$t"; done
    local keys="" b
    for b in $BACKENDS; do
        if [ "$b" = local ]; then
            for ds in $DATASETS; do keys+="$ds=$ds "; done
        else
            for ds in $S3_DATASETS; do keys+="$(BACKEND=$b result_key "$ds")=$ds "; done
        fi
    done
    DATASET_KEYS="$keys" S3_TOOLS="$S3_TOOLS" S3_DELAY_MS="$S3_DELAY_MS" S3S_VERSION="$(grep -m1 '^S3S_VERSION=' "$ROOT/scripts/s3_server.sh" | cut -d= -f2)" \
    COMMAND_LINE="$COMMAND_LINE" QUICK="$QUICK" REPS="$REPS" TOOLS="$TOOLS" DATASETS="$DATASETS" \
        TIMED_SYNC="$TIMED_SYNC" BORG_COMPRESSION="$BORG_COMPRESSION" WORK="$WORK" \
        SUBFOLDERS="$(for ds in $ALL_DATASETS; do printf '%s=%s ' "$ds" "$(subfolder_of "$ds")"; done)" \
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
keys = dict(x.split("=", 1) for x in env["DATASET_KEYS"].split())
for key, ds in keys.items():
    d = os.path.join(work, "data", ds)
    datasets[key] = {
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
    "datasets": list(keys),
    "s3_tools": env["S3_TOOLS"].split(),
    "s3_delay_ms": float(env["S3_DELAY_MS"]),
    "s3_server": "s3s-fs " + env["S3S_VERSION"] + " (debug build, as the test suite's), on loopback",
    "timed_sync": env["TIMED_SYNC"] == "1",
    "borg_compression": env["BORG_COMPRESSION"] or "borg's default (lz4)",
    "versions": {t: read(f"{work}/logs/version.{t}") for t in tools + ["tar_zstd", "cp_a"]},
    "machine": {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 1024 / 1024, 1),
                "kernel": platform.release(), "fs": fs, "os": osname},
    "datasets_info": datasets,
}, indent=1))
PYEOF

    local tools_arr
    read -r -a tools_arr <<<"$TOOLS"
    local n="${#tools_arr[@]}"
    if [ "$BACKENDS" != local ]; then start_s3; fi
    for rep in $(seq 1 "$REPS"); do
        for BACKEND in $BACKENDS; do
            if [ "$BACKEND" = local ]; then
                read -r -a tools_arr <<<"$TOOLS"
                datasets="$DATASETS"
            else
                read -r -a tools_arr <<<"$S3_TOOLS"
                datasets="$S3_DATASETS"
            fi
            n="${#tools_arr[@]}"
            for ds in $datasets; do
                log "rep $rep/$REPS, dataset $ds, $BACKEND"
                if [ "$BACKEND" = local ]; then
                    run_tar_zstd "$ds" "$rep"
                    run_cp "$ds" "$rep"
                fi
                for i in $(seq 0 $((n - 1))); do
                    run_tool "${tools_arr[$(((i + rep - 1) % n))]}" "$ds" "$rep"
                done
            done
            discard "$WORK/src"
            empty_trash
        done
    done
    BACKEND=local

    local docs_args=()
    [ "$UPDATE_DOCS" = 1 ] && docs_args=(--docs "$ROOT/docs/BENCHMARKS.md")
    $PY "$HERE/compare_report.py" "$WORK" --out "$WORK/report.md" "${docs_args[@]}"
    cat "$WORK/report.md"
}

main

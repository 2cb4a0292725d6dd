#!/usr/bin/env bash
# The main job, end to end: build coffer, back up a tree (an embedded sample of a
# clinical records folder by default, or the directory given), change it, back it up
# again, restore one study folder and everything, and prove the restore identical.
#
#   scripts/demo.sh            # embedded sample tree
#   scripts/demo.sh /some/dir  # your own tree (read only)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
COFFER="$PWD/target/release/coffer"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/coffer-demo.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export COFFER_REPOSITORY="$WORK/repo" COFFER_CACHE_DIR="$WORK/cache" COFFER_PASSWORD="demo password"

make_sample() {
    local root="$1"
    for study in 001 002 003; do
        mkdir -p "$root/studies/study_$study/images"
        for image in 1 2 3 4; do
            head -c 1500000 /dev/urandom > "$root/studies/study_$study/images/slice_$image.dcm"
        done
        for line in $(seq 1 2000); do
            echo "study $study observation $line: blood pressure 120/80, heart rate 64"
        done > "$root/studies/study_$study/report.txt"
    done
    mkdir -p "$root/empty_folder" "$root/config"
    printf 'retention=10y\n' > "$root/config/site.conf"
    ln -s ../config/site.conf "$root/studies/site.conf"
    ln "$root/studies/study_001/report.txt" "$root/studies/report_hardlink.txt"
    truncate -s 64M "$root/sparse_volume.img"
    printf 'header' | dd of="$root/sparse_volume.img" conv=notrunc status=none
    touch "$root/$(printf 'name\twith tab')" "$root/$(printf 'caf\xe9')"
}

SOURCE="${1:-}"
if [ -z "$SOURCE" ]; then
    SOURCE="$WORK/clinic"
    make_sample "$SOURCE"
fi
SOURCE="$(cd "$SOURCE" && pwd)"

echo "== init";                 "$COFFER" init
echo "== first backup";         time "$COFFER" backup "$SOURCE"
if [ -z "${1:-}" ]; then
    echo "one more line" >> "$SOURCE/studies/study_002/report.txt"
fi
echo "== second backup";        time "$COFFER" backup "$SOURCE"
echo "== snapshots";            "$COFFER" snapshots
echo "== ls one folder";        "$COFFER" ls -l "latest:$SOURCE/studies/study_002" | head -20
STUDY="$(ls "$SOURCE/studies" 2>/dev/null | head -1 || true)"
if [ -n "$STUDY" ] && [ -d "$SOURCE/studies/$STUDY" ]; then
    echo "== restore one study folder"
    "$COFFER" restore "latest:$SOURCE/studies/$STUDY" --target "$WORK/one_study" --verify
    diff -r "$SOURCE/studies/$STUDY" "$WORK/one_study"
fi
echo "== full restore with verification"
time "$COFFER" restore latest --target "$WORK/restore" --verify
RESTORED="$WORK/restore$SOURCE"
diff -r --no-dereference "$SOURCE" "$RESTORED"
stat_walk() { (cd "$1" && find . -printf '%y %m %U %G %s %T@ %l %p\n' | grep -av '^d.* \.$' | sort); }
if ! diff <(stat_walk "$SOURCE") <(stat_walk "$RESTORED"); then
    echo "metadata differs after restore" >&2
    exit 1
fi
echo "== sizes"
du -sh --apparent-size "$SOURCE" | sed 's/\t.*/ input (apparent)/'
du -sh "$COFFER_REPOSITORY" | sed 's/\t.*/ repository/'
echo "demo passed: the restored tree is identical in content and metadata"

#!/usr/bin/env bash
# Backs up a real system tree nobody here made (default /usr), restores it, and
# compares the copy with the original using an independent tool:
# `rsync -aHAXn --checksum --delete -i` must print nothing (content, modes, owners,
# times, hard links, xattrs, ACLs, symlinks all equal). Run as root so owners and
# devices come back. Needs about twice the tree's size of free space in $WORK.
#
#   COFFER_BIN=target/release/coffer bash benches/system_tree.sh [/usr]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benches/common.sh"

TREE="${1:-/usr}"
command -v rsync >/dev/null || { apt-get install -y -qq rsync >/dev/null || die "rsync is needed"; }
find_coffer
WORK="$(mktemp -d "${TMPDIR:-/tmp}/coffer-system-tree.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export COFFER_REPOSITORY="$WORK/repo" COFFER_CACHE_DIR="$WORK/cache" COFFER_PASSWORD="system tree"

log "init";    "$COFFER" init -q
log "backup $TREE ($(find "$TREE" -xdev | wc -l) entries)"
/usr/bin/time -f "backup: %e s, %M KiB peak" "$COFFER" -q backup --one-file-system "$TREE"
log "restore"
/usr/bin/time -f "restore: %e s, %M KiB peak" "$COFFER" -q restore latest --target "$WORK/restore"
log "restore again over the first copy, with --verify"
"$COFFER" -q restore latest --target "$WORK/restore" --verify
log "compare with rsync -aHAXn --checksum --delete -i"
DIFF="$WORK/rsync.txt"
rsync -aHAXn --checksum --delete -i "$TREE/" "$WORK/restore$TREE/" > "$DIFF"
LEFT="$(find "$WORK/restore" -name '.coffer-restore-*' | wc -l)"
if [ -s "$DIFF" ] || [ "$LEFT" != 0 ]; then
    head -50 "$DIFF"
    die "$(wc -l < "$DIFF") line(s) of rsync output, $LEFT temporary file(s) left"
fi
log "identical: rsync printed nothing, no temporary file left"

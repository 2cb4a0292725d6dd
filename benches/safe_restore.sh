#!/usr/bin/env bash
# Safe restore at scale (issue 14):
#  1. a rollback of 1 GiB: a live folder of 1 GiB whose every file changed since the
#     backup is restored (taking a safety snapshot of the 1 GiB first), then rolled
#     back with `restore --rollback`; the times of both, and a check with sha256sum
#     that the folder is back as it was;
#  2. find and diff on FILES files across SNAPSHOTS snapshots (default 100,000 and 30;
#     1% of the files change between snapshots): wall time and peak memory of
#     `find '*.dat'` over all snapshots and of `diff` of the first and last.
#  3. diff of the first and last snapshot, and find in the first, middle and last,
#     compared with a brute-force walk of those snapshots restored.
#
#   COFFER_BIN=target/release/coffer bash benches/safe_restore.sh
set -euo pipefail
# Throwaway repositories get cheap keys (below the floor for real ones).
export COFFER_TESTONLY_WEAK_KDF=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/benches/common.sh"
find_coffer
FILES="${FILES:-100000}"
SNAPSHOTS="${SNAPSHOTS:-30}"
GIB_FILES="${GIB_FILES:-64}"
WORK="$(mktemp -d "${WORK_DIR:-/var/tmp}/coffer-safe.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export COFFER_PASSWORD=bench COFFER_CACHE_DIR="$WORK/cache"
measure() { /usr/bin/time -f '%e s, %M KiB peak' "$@" 2>&1 >/dev/null | tail -1; }

log "1. rollback of 1 GiB ($GIB_FILES files of 16 MiB)"
export COFFER_REPOSITORY="$WORK/repo1"
"$COFFER" -q init --kdf-memory-kib 1024 --kdf-iterations 1
mkdir -p "$WORK/live"
for n in $(seq 1 "$GIB_FILES"); do head -c 16M /dev/urandom > "$WORK/live/part$n.bin"; done
"$COFFER" -q backup "$WORK/live"
for n in $(seq 1 "$GIB_FILES"); do head -c 16M /dev/urandom > "$WORK/live/part$n.bin"; done
(cd "$WORK/live" && sha256sum ./* | sort) > "$WORK/before.sha"
sync
echo "restore over 1 GiB of changed files (safety snapshot first): $(measure "$COFFER" restore "latest:$WORK/live" --target "$WORK/live")"
id="$("$COFFER" --json restores | python3 -c 'import json,sys; print(json.load(sys.stdin)["restores"][-1]["restore_id"][:8])')"
sync
echo "restore --rollback $id: $(measure "$COFFER" restore --rollback "$id" --force)"
(cd "$WORK/live" && sha256sum ./* | sort) > "$WORK/after.sha"
if cmp -s "$WORK/before.sha" "$WORK/after.sha"; then echo "after the rollback the folder is as before (sha256sum of $GIB_FILES files)"; else die "the rollback left the folder different"; fi
rm -rf "$WORK/live" "$WORK/repo1" "$WORK/cache"

log "2. find and diff: $FILES files, $SNAPSHOTS snapshots"
export COFFER_REPOSITORY="$WORK/repo2"
"$COFFER" -q init --kdf-memory-kib 1024 --kdf-iterations 1
python3 - "$WORK/tree" "$FILES" <<'PY'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
for n in range(files):
    folder = f"{root}/d{n % 100:03}/e{n % 7}"
    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/f{n:06}.{['dat', 'txt', 'dcm'][n % 3]}", "wb") as out:
        out.write(os.urandom(64 + n % 512))
PY
for round in $(seq 1 "$SNAPSHOTS"); do
    if [ "$round" -gt 1 ]; then
        python3 - "$WORK/tree" "$FILES" "$round" <<'PY'
import os, random, sys
root, files, round_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(round_)
for n in rng.sample(range(files), files // 100):
    path = f"{root}/d{n % 100:03}/e{n % 7}/f{n:06}.{['dat', 'txt', 'dcm'][n % 3]}"
    with open(path, "wb") as out:
        out.write(os.urandom(64 + rng.randrange(512)))
PY
    fi
    "$COFFER" -q backup "$WORK/tree"
done
first="$("$COFFER" --json snapshots | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][0]["snapshot_id"][:8])')"
echo "find '*.dat' over $SNAPSHOTS snapshots, manifests downloaded: $(measure "$COFFER" find '*.dat')"
echo "find '*.dat' again, manifests cached: $(measure "$COFFER" find '*.dat')"
echo "matches: $("$COFFER" --json find '*.dat' | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["matches"]))')"
echo "diff $first latest: $(measure "$COFFER" diff "$first" latest)"
echo "diff --metadata $first latest: $(measure "$COFFER" diff --metadata "$first" latest)"
echo "changed entries: $("$COFFER" --json diff "$first" latest | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["added"], "added,", d["removed"], "removed,", d["modified"], "modified")')"
echo "stats of the repository: $(measure "$COFFER" stats)"

log "3. diff and find against a brute-force comparison of restored trees (first, middle, last snapshot)"
ids=($("$COFFER" --json snapshots | python3 -c 'import json,sys; [print(s["snapshot_id"]) for s in json.load(sys.stdin)["snapshots"]]'))
middle="${ids[$(( ${#ids[@]} / 2 ))]}"
for id in "${ids[0]}" "$middle" "${ids[-1]}"; do
    "$COFFER" -q restore "$id:$WORK/tree" --target "$WORK/r-${id:0:8}" --no-sync
done
"$COFFER" --json diff "${ids[0]}" "${ids[-1]}" > "$WORK/diff.json"
"$COFFER" --json find '*.dat' > "$WORK/find.json"
python3 - "$WORK" "${ids[0]}" "$middle" "${ids[-1]}" <<'PY'
import hashlib, json, os, sys
work, first, middle, last = sys.argv[1:5]
def tree(root):
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            content = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) else None
            seen[rel] = (content, st.st_mode)
    return seen
a, b = tree(f"{work}/r-{first[:8]}"), tree(f"{work}/r-{last[:8]}")
expected = {(p, "added") for p in b.keys() - a.keys()} | {(p, "removed") for p in a.keys() - b.keys()}
expected |= {(p, "modified") for p in a.keys() & b.keys() if a[p][0] != b[p][0]}
prefix = f"{work}/tree/"
diff = json.load(open(f"{work}/diff.json"))
actual = {(e["path"][len(prefix):], e["change"]) for e in diff["entries"] if e["path"].startswith(prefix)}
assert actual == expected, f"diff disagrees: {len(actual ^ expected)} differences, e.g. {sorted(actual ^ expected)[:5]}"
print(f"diff agrees with the restored trees: {len(expected)} changed entries")
found = json.load(open(f"{work}/find.json"))["matches"]
for snap in (first, middle, last):
    mine = {m["path"][len(prefix):] for m in found if m["snapshot_id"] == snap}
    brute = {p for p in tree(f"{work}/r-{snap[:8]}") if p.endswith(".dat")}
    assert mine == brute, f"find disagrees on {snap[:8]}: {len(mine ^ brute)} differences"
    print(f"find agrees on snapshot {snap[:8]}: {len(brute)} matches")
PY

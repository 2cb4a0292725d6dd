#!/usr/bin/env python3
"""Dataset helpers for benches/compare.sh and benches/many_files.sh (stdlib only).

Subcommands (all deterministic for a given seed and input):

  source OUT --files N [--groups G] SRC_ROOT...
      Copy the first N regular files found under the SRC_ROOTs (crate or package
      directories in sorted order, mtimes and modes kept) into OUT/part-00 .. part-GG,
      N/G files in each part, in order (a directory may straddle two parts).
  source-change DIR [--seed S]
      Apply the "nightly change" to a copy of a source tree in place: edit ~1% of the
      files in the middle, add 20 files, delete 20 files.
  large OUT --mb M [--seed S]
      Write ~M MiB of large files mixing random and compressible (text-like) data:
      15 files of M/16 MiB in images/, media/, archives/, and one file in exports/
      (the subfolder, 1/16 of the data).
  large-change DIR [--seed S]
      Overwrite 1 MiB in the middle of media/media-02.bin and insert 4 MiB at the
      front of archives/archive-01.bin.
  many OUT --files N [--per-dir D] [--seed S]
      Write N small files (0-4 KiB) into N/D directories of D files.
  treehash DIR
      Print one SHA-256 over the tree: relative path, type, permission bits, size,
      content hash (files) or target (symlinks), in sorted order.
  stats DIR
      Print a JSON object {"files": n, "dirs": n, "bytes": n}.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import stat
import sys

MIB = 1 << 20

# Text-like bytes: random bytes mapped onto an English-ish alphabet (frequent letters
# repeated, spaces, newlines). About 4.2 bits of entropy per byte, so zstd -3 stores it
# in roughly half the space, but it does not deduplicate with itself.
_ALPHABET = (b"eeeeeeetttttaaaaooooiiiinnnnsssshhhrrrdddllcuumwfgypbvk"
             b"          \n\n,.0123456789_(){};=")
TEXT_TABLE = bytes(_ALPHABET[i % len(_ALPHABET)] for i in range(256))


def text_bytes(rng, n):
    return rng.randbytes(n).translate(TEXT_TABLE)


def cmd_source(args):
    files = []
    for root in args.roots:
        if not os.path.isdir(root):
            continue
        # one level of package directories (crates, python packages), sorted
        tops = sorted(os.listdir(root))
        for top in tops:
            path = os.path.join(root, top)
            group = []
            if os.path.isdir(path) and not os.path.islink(path):
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                    for name in sorted(filenames):
                        p = os.path.join(dirpath, name)
                        if os.path.isfile(p) and not os.path.islink(p):
                            group.append(p)
            elif os.path.isfile(path) and not os.path.islink(path):
                group.append(path)
            if group:
                files.append((root, top, group))
            if sum(len(g) for _, _, g in files) >= args.files:
                break
        if sum(len(g) for _, _, g in files) >= args.files:
            break
    total = min(args.files, sum(len(g) for _, _, g in files))
    if total < args.files:
        sys.exit(f"only {total} source files found under {args.roots}, {args.files} wanted")
    per_part = -(-total // args.groups)
    n = 0
    for root, top, group in files:
        for p in group:
            if n >= total:
                break
            part = n // per_part
            rel = os.path.relpath(p, root)
            dst = os.path.join(args.out, f"part-{part:02d}", rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(p, dst)
            n += 1
    print(json.dumps({"files": n, "parts": args.groups}))


def all_files(d):
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def cmd_source_change(args):
    rng = random.Random(args.seed)
    files = all_files(args.dir)
    n_edit = max(1, len(files) // 100)
    picked = rng.sample(files, n_edit + 20)
    edit, delete = picked[:n_edit], picked[n_edit:]
    for p in edit:
        with open(p, "rb") as f:
            data = f.read()
        mid = len(data) // 2
        line = b"\n// coffer bench edit %d\n" % rng.randrange(1 << 30)
        with open(p, "wb") as f:
            f.write(data[:mid] + line + data[mid:])
    for p in delete:
        os.unlink(p)
    dirs = sorted({os.path.dirname(p) for p in files})
    for i in range(20):
        d = rng.choice(dirs)
        with open(os.path.join(d, f"bench_new_{i:02d}.txt"), "wb") as f:
            f.write(text_bytes(rng, rng.randrange(200, 20000)))
    print(json.dumps({"edited": len(edit), "deleted": len(delete), "added": 20}))


LARGE_LAYOUT = (
    [("images", f"image-{i:02d}.bin") for i in range(5)]
    + [("media", f"media-{i:02d}.bin") for i in range(5)]
    + [("archives", f"archive-{i:02d}.bin") for i in range(5)]
    + [("exports", "export-00.bin")]
)


def write_mixed(path, size, rng, random_share):
    """size bytes in 1 MiB segments, each random with probability random_share."""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(MIB, left)
            if rng.random() < random_share:
                f.write(rng.randbytes(n))
            else:
                f.write(text_bytes(rng, n))
            left -= n


def cmd_large(args):
    rng = random.Random(args.seed)
    size = args.mb * MIB // len(LARGE_LAYOUT)
    for i, (d, name) in enumerate(LARGE_LAYOUT):
        os.makedirs(os.path.join(args.out, d), exist_ok=True)
        # shares of random data from 0% to 100% across the files (about half overall)
        share = (i % 5) / 4 if d != "exports" else 0.5
        write_mixed(os.path.join(args.out, d, name), size, rng, share)
    print(json.dumps({"files": len(LARGE_LAYOUT), "bytes": size * len(LARGE_LAYOUT)}))


def cmd_large_change(args):
    rng = random.Random(args.seed)
    p = os.path.join(args.dir, "media", "media-02.bin")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.seek(size // 2)
        f.write(rng.randbytes(min(MIB, size // 4)))
    p = os.path.join(args.dir, "archives", "archive-01.bin")
    tmp = p + ".tmp"
    with open(tmp, "wb") as out, open(p, "rb") as f:
        out.write(text_bytes(rng, 2 * MIB) + rng.randbytes(2 * MIB))
        shutil.copyfileobj(f, out, 4 * MIB)
    shutil.copystat(p, tmp)
    os.replace(tmp, p)
    os.utime(p)  # the insertion is a new version: new mtime
    print(json.dumps({"edited": 1, "inserted": 1}))


def cmd_many(args):
    rng = random.Random(args.seed)
    block = rng.randbytes(1 << 16)
    n = 0
    d = 0
    while n < args.files:
        dpath = os.path.join(args.out, f"d{d // 100:03d}", f"d{d:05d}")
        os.makedirs(dpath, exist_ok=True)
        for i in range(min(args.per_dir, args.files - n)):
            size = rng.randrange(0, 4097)
            off = rng.randrange(0, len(block) - size)
            # a unique header so no two files are identical, then shared-looking data
            data = (b"%d\n" % n + block[off:off + size])[:size] if size else b""
            with open(os.path.join(dpath, f"f{i:04d}"), "wb") as f:
                f.write(data)
            n += 1
        d += 1
    print(json.dumps({"files": n, "dirs": d}))


def cmd_treehash(args):
    h = hashlib.sha256()
    root = args.dir
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        st = os.lstat(dirpath)
        h.update(b"D %s %o\n" % (os.fsencode(rel_dir), stat.S_IMODE(st.st_mode)))
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            rel = os.fsencode(os.path.relpath(p, root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L %s %s\n" % (rel, os.fsencode(os.readlink(p))))
            elif stat.S_ISREG(st.st_mode):
                fh = hashlib.sha256()
                with open(p, "rb") as f:
                    while True:
                        b = f.read(4 * MIB)
                        if not b:
                            break
                        fh.update(b)
                h.update(b"F %s %o %d %s\n" % (rel, stat.S_IMODE(st.st_mode), st.st_size,
                                               fh.hexdigest().encode()))
            else:
                h.update(b"O %s %o\n" % (rel, st.st_mode))
        # directories listed by os.walk in dirnames are visited as dirpath later
    print(h.hexdigest())


def cmd_stats(args):
    files = dirs = size = 0
    for dirpath, dirnames, filenames in os.walk(args.dir):
        dirs += 1
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    print(json.dumps({"files": files, "dirs": dirs, "bytes": size}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("source")
    p.add_argument("out")
    p.add_argument("roots", nargs="+")
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--groups", type=int, default=16)
    p = sub.add_parser("source-change")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=2)
    p = sub.add_parser("large")
    p.add_argument("out")
    p.add_argument("--mb", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("large-change")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=3)
    p = sub.add_parser("many")
    p.add_argument("out")
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--per-dir", type=int, default=1000)
    p.add_argument("--seed", type=int, default=4)
    p = sub.add_parser("treehash")
    p.add_argument("dir")
    p = sub.add_parser("stats")
    p.add_argument("dir")
    args = ap.parse_args()
    {
        "source": cmd_source,
        "source-change": cmd_source_change,
        "large": cmd_large,
        "large-change": cmd_large_change,
        "many": cmd_many,
        "treehash": cmd_treehash,
        "stats": cmd_stats,
    }[args.cmd](args)


if __name__ == "__main__":
    main()

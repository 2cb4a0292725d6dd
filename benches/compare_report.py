#!/usr/bin/env python3
"""Markdown report of a benches/compare.sh run (stdlib only).

    python3 benches/compare_report.py WORK [--out FILE] [--docs docs/BENCHMARKS.md]

Reads WORK/results.jsonl (one JSON object per measurement) and WORK/meta.json, and
writes per dataset and step the median wall time and peak RSS of each tool, coffer's
ratio to the best peer (the lowest median among restic, borg and rustic) against the
target, repository sizes, and the first backup's throughput next to
`tar c | zstd -3 -T0`. With --docs, the report replaces the part of that file between
<!-- results:begin --> and <!-- results:end --> (or, for a QUICK=1 smoke run,
<!-- smoke:begin --> and <!-- smoke:end -->); the markers are appended if missing.
"""
import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

PEERS = ["restic", "borg", "rustic"]
# step, label, time target (coffer / best peer), or None
STEPS = [
    ("init", "init", None),
    ("backup_first", "first backup", 0.6),
    ("backup_unchanged", "unchanged backup", 0.5),
    ("backup_changed", "backup after the change", 0.6),
    ("restore_full", "full restore", 0.5),
    ("restore_sub", "subfolder restore", 0.5),
    ("check_read_data", "check, full data read", 0.6),
]
DATASET_TEXT = {
    "source": "real source tree",
    "pg": "PostgreSQL plain dump (pgbench)",
    "large": "large files, random and text-like",
}


def fmt_s(s):
    if s is None:
        return "—"
    return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


def fmt_mib(kb):
    if kb is None:
        return "—"
    m = kb / 1024
    return f"{m:.1f} MiB" if m < 10 else f"{m:.0f} MiB"


def fmt_bytes(b):
    if b is None:
        return "—"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            v = b / div
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{b} B"


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}x"


def verdict(ok):
    return "—" if ok is None else ("PASS" if ok else "**MISS**")


def load(work):
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    rows = []
    with open(os.path.join(work, "results.jsonl")) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return meta, rows


def medians(rows):
    """(dataset, tool, step) -> {"wall": median, "rss": median, "bytes": median, "n": reps}"""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        k = (r["dataset"], r["tool"], r["step"])
        if r.get("failed"):
            continue
        for src, dst in (("wall_s", "wall"), ("rss_kb", "rss"), ("bytes", "bytes"),
                         ("requests", "requests"), ("bytes_up", "up"), ("bytes_down", "down"),
                         ("server_cpu_s", "server_cpu"), ("proxy_cpu_s", "proxy_cpu")):
            if src in r:
                acc[k][dst].append(r[src])
    out = {}
    for k, d in acc.items():
        out[k] = {m: statistics.median(v) for m, v in d.items()}
        out[k]["n"] = max(len(v) for v in d.values())
    return out


def tools_of(meta, ds):
    """The tools run on a dataset key: those with an S3 backend for "DATASET@s3..."."""
    return meta.get("s3_tools", meta["tools"]) if "@" in ds else meta["tools"]


def report(meta, rows):
    med = medians(rows)
    failed = {(r["dataset"], r["tool"], r["step"]) for r in rows if r.get("failed")}
    all_tools = meta["tools"]
    peers = [t for t in PEERS if t in all_tools]
    L = []
    quick = meta.get("quick")
    title = "Smoke run (QUICK=1: tiny datasets, not the real numbers)" if quick else "Latest full run"
    L.append(f"### {title}\n")
    m = meta["machine"]
    L.append(f"- Date: {meta['started']}; {meta['reps']} repetition(s), medians shown; "
             f"tools in rotating order each repetition.")
    L.append(f"- Command: `{meta['command']}`")
    L.append(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB RAM, {m['os']}, "
             f"Linux {m['kernel']}, work directory on {m['fs']}.")
    vers = "; ".join(f"{t}: `{meta['versions'].get(t, '?')}`" for t in all_tools + ["tar_zstd", "cp_a"])
    L.append(f"- Versions: {vers}.")
    L.append(f"- borg compression: {meta['borg_compression']}; the others: their defaults "
             f"(coffer zstd 2, restic `auto`, rustic zstd 3). "
             + ("`sync` inside each timed step." if meta.get("timed_sync")
                else "`sync` (untimed) before each step."))
    if any("@" in ds for ds in meta["datasets"]):
        L.append(f"- S3: {meta.get('s3_server', 's3s-fs')}, one server for all tools "
                 f"({', '.join(meta.get('s3_tools', []))}; borg has no S3 backend), each tool's "
                 f"requests through `benches/s3_proxy.py`, which counts them; `@s3+{meta.get('s3_delay_ms', 0):g}ms` "
                 f"adds {meta.get('s3_delay_ms', 0):g} ms in each direction (a round trip "
                 f"{2 * meta.get('s3_delay_ms', 0):g} ms longer).")
    missing = [t for t in PEERS if t not in all_tools]
    if missing:
        L.append(f"- **Not run: {', '.join(missing)}** (TOOLS override); the best peer is "
                 f"taken over {', '.join(peers) or 'nothing'} only.")
    L.append("")

    # datasets
    L.append("| dataset | files before | bytes before | files after | bytes after | subfolder restored |")
    L.append("|---|---:|---:|---:|---:|---|")
    for ds in meta["datasets"]:
        if "@" in ds:
            continue  # the same data on S3
        info = meta["datasets_info"].get(ds, {})
        b, a, s = info.get("before", {}), info.get("after", {}), info.get("sub", {})
        nf = s.get("files")
        share = (f" ({100 * s['bytes'] / a['bytes']:.0f}% of bytes, {nf} file{'' if nf == 1 else 's'})"
                 if a.get("bytes") and "bytes" in s else "")
        L.append(f"| {ds}: {DATASET_TEXT.get(ds, ds)} | {b.get('files', '?')} | {fmt_bytes(b.get('bytes'))} "
                 f"| {a.get('files', '?')} | {fmt_bytes(a.get('bytes'))} | `{info.get('subfolder', '?')}/`{share} |")
    L.append("")

    passes = misses = 0
    miss_list = []
    for ds in meta["datasets"]:
        tools = tools_of(meta, ds)
        L.append(f"#### {ds}: wall time and peak RSS (median)\n")
        head = ["step"] + tools + ["coffer / best peer, time", "target", "time",
                                   "coffer / lowest peer, RSS", "memory"]
        L.append("| " + " | ".join(head) + " |")
        L.append("|---" + "|---:" * (len(tools)) + "|---:|---:|---|---:|---|")
        for step, label, target in STEPS:
            # on S3 every step's target is 0.6x (issue 17)
            if "@" in ds and target is not None:
                target = 0.6
            cells = [label]
            for t in tools:
                v = med.get((ds, t, step))
                if (ds, t, step) in failed:
                    cells.append("failed" + ("" if v is None else f" (once; {fmt_s(v['wall'])})"))
                    continue
                cells.append("—" if v is None else f"{fmt_s(v['wall'])} · {fmt_mib(v['rss'])}")
            c = med.get((ds, "coffer", step))
            # a peer that failed the step in any repetition does not count for it
            pv = [med[(ds, p, step)] for p in peers if (ds, p, step) in med and (ds, p, step) not in failed]
            t_ratio = m_ratio = t_ok = m_ok = None
            if c is not None and pv:
                best_t = min(v["wall"] for v in pv)
                best_m = min(v["rss"] for v in pv)
                t_ratio = c["wall"] / best_t if best_t > 0 else None
                m_ratio = c["rss"] / best_m if best_m > 0 else None
                if target is not None and t_ratio is not None:
                    t_ok = t_ratio <= target
                if m_ratio is not None:
                    m_ok = m_ratio <= 1.0
            for ok, what in ((t_ok, "time"), (m_ok, "memory")):
                if ok is True:
                    passes += 1
                elif ok is False:
                    misses += 1
                    miss_list.append(f"{ds} {label} {what}")
            cells += [fmt_ratio(t_ratio), "—" if target is None else f"≤ {target}x", verdict(t_ok),
                      fmt_ratio(m_ratio), verdict(m_ok)]
            L.append("| " + " | ".join(cells) + " |")
        nosync = med.get((ds, "coffer", "restore_full_nosync"))
        if nosync:
            L.append(f"| full restore, coffer `--no-sync` | {fmt_s(nosync['wall'])} · {fmt_mib(nosync['rss'])}"
                     + " | —" * (len(tools) - 1) + " | | | | | |")
        L.append("")
        if "@" in ds:
            L.append(f"Requests and bytes through the proxy, {ds} (median): requests · MB sent · MB received"
                     " · CPU seconds of the S3 server (and of the proxies) during the step\n")
            L.append("| step | " + " | ".join(tools) + " | coffer / fewest peer requests |")
            L.append("|---" + "|---:" * (len(tools) + 1) + "|")
            for step, label, _ in STEPS:
                cells = [label]
                for t in tools:
                    v = med.get((ds, t, step))
                    cpu = ("" if v is None or "server_cpu" not in v else
                           f" · {v['server_cpu']:.1f} s ({v['proxy_cpu']:.1f} s)")
                    cells.append("—" if v is None or "requests" not in v else
                                 f"{v['requests']:.0f} · {v['up'] / 1e6:.1f} · {v['down'] / 1e6:.1f}{cpu}")
                c = med.get((ds, "coffer", step))
                pr = [med[(ds, p, step)]["requests"] for p in peers
                      if (ds, p, step) in med and "requests" in med[(ds, p, step)]]
                cells.append(fmt_ratio(c["requests"] / min(pr)) if c and "requests" in c and pr and min(pr) > 0
                             else "—")
                L.append("| " + " | ".join(cells) + " |")
            L.append("")

    local = [ds for ds in meta["datasets"] if "@" not in ds]
    if any((ds, "cp_a", "restore_full") in med for ds in local):
        L.append("#### Full restore against the physical proxy `cp -a` (median)\n")
        L.append("`cp -a` copies the same tree from the page cache into the same file system; "
                 "`+ sync` has a `sync` in the timed step, as coffer's restore ends with one.\n")
        L.append("| dataset | cp -a | cp -a + sync | coffer | coffer `--no-sync` | coffer / cp -a + sync "
                 "| target | coffer / cp -a | final sync's share of coffer's time |")
        L.append("|---|---:|---:|---:|---:|---:|---|---:|---:|")
        for ds in local:
            cp = med.get((ds, "cp_a", "restore_full"))
            cps = med.get((ds, "cp_a_sync", "restore_full"))
            c = med.get((ds, "coffer", "restore_full"))
            ns = med.get((ds, "coffer", "restore_full_nosync"))
            r_sync = c["wall"] / cps["wall"] if c and cps and cps["wall"] > 0 else None
            r_plain = c["wall"] / cp["wall"] if c and cp and cp["wall"] > 0 else None
            share = (c["wall"] - ns["wall"]) / c["wall"] if c and ns and c["wall"] > 0 else None
            ok = None if r_sync is None else r_sync <= 1.3
            if ok is True:
                passes += 1
            elif ok is False:
                misses += 1
                miss_list.append(f"{ds} full restore against cp -a + sync")
            L.append(f"| {ds} | {fmt_s(cp['wall']) if cp else '—'} | {fmt_s(cps['wall']) if cps else '—'} "
                     f"| {fmt_s(c['wall']) if c else '—'} | {fmt_s(ns['wall']) if ns else '—'} "
                     f"| {fmt_ratio(r_sync)} | ≤ 1.3x | {fmt_ratio(r_plain)} "
                     f"| {'—' if share is None else f'{100 * share:.0f}%'} |")
        L.append("")

    L.append("#### Repository size after the third backup (median)\n")
    L.append("| dataset | " + " | ".join(all_tools) + " | coffer / restic | target | size |")
    L.append("|---" + "|---:" * len(all_tools) + "|---:|---:|---|")
    for ds in local:
        cells = [ds]
        for t in all_tools:
            v = med.get((ds, t, "repo_size"))
            cells.append(fmt_bytes(v["bytes"]) if v else "—")
        c, r = med.get((ds, "coffer", "repo_size")), med.get((ds, "restic", "repo_size"))
        ratio = ok = None
        if c and r and r["bytes"]:
            ratio = c["bytes"] / r["bytes"]
            ok = ratio <= 1.0
            if ok:
                passes += 1
            else:
                misses += 1
                miss_list.append(f"{ds} repository size")
        cells += [fmt_ratio(ratio), "≤ 1.00x", verdict(ok)]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    L.append("#### First backup throughput against `tar c DATA | zstd -3 -T0` (median)\n")
    L.append("| dataset | data | tar \\| zstd | MB/s | zstd output | coffer first backup | MB/s | coffer / tar \\| zstd, time |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for ds in local:
        size = meta["datasets_info"].get(ds, {}).get("before", {}).get("bytes")
        tz = med.get((ds, "tar_zstd", "backup_first"))
        tzs = med.get((ds, "tar_zstd", "repo_size"))
        c = med.get((ds, "coffer", "backup_first"))

        def mbps(v):
            return f"{size / 1e6 / v['wall']:.0f}" if v and size and v["wall"] > 0 else "—"

        ratio = c["wall"] / tz["wall"] if c and tz and tz["wall"] > 0 else None
        L.append(f"| {ds} | {fmt_bytes(size)} | {fmt_s(tz['wall']) if tz else '—'} | {mbps(tz)} "
                 f"| {fmt_bytes(tzs['bytes']) if tzs else '—'} | {fmt_s(c['wall']) if c else '—'} "
                 f"| {mbps(c)} | {fmt_ratio(ratio)} |")
    L.append("")

    L.append(f"**Targets met: {passes} of {passes + misses}.**"
             + (f" Missed: {'; '.join(miss_list)}." if miss_list else ""))
    L.append("")
    return "\n".join(L)


def update_docs(path, text, quick):
    tag = "smoke" if quick else "results"
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    doc = ""
    if os.path.exists(path):
        with open(path) as f:
            doc = f.read()
    if begin in doc and end in doc:
        i = doc.index(begin) + len(begin)
        j = doc.index(end)
        doc = doc[:i] + "\n" + text + "\n" + doc[j:]
    else:
        doc = doc.rstrip("\n") + f"\n\n{begin}\n{text}\n{end}\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("--out")
    ap.add_argument("--docs")
    args = ap.parse_args()
    meta, rows = load(args.work)
    text = report(meta, rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if args.docs:
        update_docs(args.docs, text, meta.get("quick"))


if __name__ == "__main__":
    main()

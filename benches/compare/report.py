#!/usr/bin/env python3
"""Turns the compare benches' criterion output into Markdown tables of medians and ratios.

Usage:
    python3 report.py [CRITERION_DIR]

CRITERION_DIR is `criterion/` under the CARGO_TARGET_DIR the benches ran with (default:
$CARGO_TARGET_DIR/criterion, else ./target/criterion). Reads every
`**/new/benchmark.json` (which bench it is) with its `new/estimates.json` (the median, in
ns per iteration) and prints, for each group, one row per pair "ours against theirs" with
both medians and the ratio ours ÷ theirs at N = 8, 64, 1024, marked against its target;
then every median of every row, floors and calibration included.

Exits with status 1 when a ratio misses its target or the parallelism check fails, so a
script can tell; the tables are printed either way.
"""

import json
import os
import sys
from pathlib import Path

SIZES = ["8", "64", "1024"]

# The 2-thread calibration: a per-thread RNG loop on 2 threads must take no longer per
# round than on 1 thread. Above this ratio the two threads did not run in parallel and the
# 2-thread rows of that N say nothing about the balancers.
PARALLEL_TOLERANCE = 1.15

# (group, label, ours, theirs, target ours ÷ theirs)
PAIRS = [
    ("pick_round_robin", "RoundRobin, raw: `Picker::pick` vs `iter(key).next()`",
     "tower-lb RoundRobin Picker::pick", "pingora RoundRobin iter().next()", 1.0),
    ("pick_round_robin", "RoundRobin, full: `Pool::pick` vs `LoadBalancer::select`",
     "tower-lb RoundRobin Pool::pick", "pingora RoundRobin select", 0.5),
    ("pick_random", "Random, raw: `Picker::pick` vs `iter(key).next()`",
     "tower-lb Random Picker::pick", "pingora Random iter().next()", 1.0),
    ("pick_random", "Random, full: `Pool::pick` vs `LoadBalancer::select`",
     "tower-lb Random Pool::pick", "pingora Random select", 0.5),
    ("pick_hash", "hash 16 B key, raw: Maglev `Picker::pick` vs FNVHash `iter(key).next()`",
     "tower-lb Maglev Picker::pick", "pingora FNVHash iter().next()", 1.0),
    ("pick_hash", "hash 16 B key, raw: Ring `Picker::pick` vs Ketama `iter(key).next()`",
     "tower-lb Ring Picker::pick", "pingora Ketama iter().next()", 1.0),
    ("pick_hash", "hash 16 B key, full: Maglev `Pool::pick` vs FNVHash `select`",
     "tower-lb Maglev Pool::pick", "pingora FNVHash select", 0.5),
    ("pick_hash", "hash 16 B key, full: Ring `Pool::pick` vs Ketama `select`",
     "tower-lb Ring Pool::pick", "pingora Ketama select", 0.5),
    ("request", "request: our `Balance` P2C vs tower p2c `PendingRequests`",
     "tower-lb PowerOfTwoChoices", "tower p2c PendingRequests", 0.5),
    ("request", "request: our `Balance` PeakEwma vs tower p2c `PeakEwma`",
     "tower-lb PeakEwma", "tower p2c PeakEwma", 0.5),
    ("two_threads", "2 threads, RoundRobin: `Pool::pick` vs `select`",
     "tower-lb RoundRobin Pool::pick", "pingora RoundRobin select", 0.5),
    ("two_threads", "2 threads, RoundRobin raw: `Picker::pick` vs `iter(key).next()`",
     "tower-lb RoundRobin Picker::pick", "pingora RoundRobin iter().next()", 1.0),
    ("two_threads", "2 threads, Random: `Pool::pick` vs `select`",
     "tower-lb Random Pool::pick", "pingora Random select", 0.5),
    ("two_threads", "2 threads, Random raw: `Picker::pick` vs `iter(key).next()`",
     "tower-lb Random Picker::pick", "pingora Random iter().next()", 1.0),
    ("two_threads", "2 threads, hash: Maglev `Pool::pick` vs FNVHash `select`",
     "tower-lb Maglev Pool::pick", "pingora FNVHash select", 0.5),
    ("two_threads", "2 threads, hash: Ring `Pool::pick` vs Ketama `select`",
     "tower-lb Ring Pool::pick", "pingora Ketama select", 0.5),
]

CALIBRATION_1 = "calibration: SmallRng loop, 1 thread(s)"
CALIBRATION_2 = "calibration: SmallRng loop, 2 thread(s)"

GROUP_TITLES = {
    "pick_round_robin": "Pick latency, round robin (ns per pick, 1 thread)",
    "pick_random": "Pick latency, random (ns per pick, 1 thread)",
    "pick_hash": "Pick latency, hashing a 16-byte key (ns per pick, 1 thread)",
    "request": "Request overhead: ready + call + await (ns per request, current-thread runtime)",
    "two_threads": "2 threads sharing one balancer (ns per round: each thread makes one pick)",
}


def criterion_dir():
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return Path(target) / "criterion"


def load(root):
    """{group: {function: {N: median ns}}} from every new/ result under root."""
    results = {}
    for bench in root.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        estimates = json.loads((bench.parent / "estimates.json").read_text())
        median = estimates["median"]["point_estimate"]
        group = results.setdefault(meta["group_id"], {})
        group.setdefault(meta["function_id"], {})[meta["value_str"]] = median
    return results


def ns(value):
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value / 1000:.2f} µs"
    if value >= 100:
        return f"{value:.0f} ns"
    return f"{value:.1f} ns"


def calibration(results):
    """{N: (1-thread, 2-thread, ratio)} of the two_threads group."""
    rows = results.get("two_threads", {})
    one, two = rows.get(CALIBRATION_1, {}), rows.get(CALIBRATION_2, {})
    out = {}
    for n in SIZES:
        if n in one and n in two:
            out[n] = (one[n], two[n], two[n] / one[n])
    return out


def main():
    root = criterion_dir()
    results = load(root)
    if not results:
        sys.exit(f"no criterion results under {root}")
    calib = calibration(results)
    ok = True
    out = []

    out.append("| comparison | target | N = 8 | N = 64 | N = 1024 |")
    out.append("| --- | --- | --- | --- | --- |")
    for group, label, ours, theirs, target in PAIRS:
        rows = results.get(group, {})
        cells = []
        for n in SIZES:
            o = rows.get(ours, {}).get(n)
            t = rows.get(theirs, {}).get(n)
            if o is None or t is None:
                cells.append("not run")
                continue
            ratio = o / t
            mark = "" if ratio <= target else " ✗"
            if mark:
                ok = False
            note = ""
            if group == "two_threads" and n in calib and calib[n][2] > PARALLEL_TOLERANCE:
                note = " (not parallel)"
            cells.append(f"{ns(o)} / {ns(t)} = **{ratio:.2f}×**{mark}{note}")
        out.append(f"| {label} | ≤ {target:.1f}× | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Each cell: ours / theirs = ours ÷ theirs (medians); ✗ marks a missed target.")
    out.append("")

    if calib:
        out.append("Parallelism check of the 2-thread rows (per-thread RNG loop, no shared "
                   f"memory; valid when 2 threads ÷ 1 thread ≤ {PARALLEL_TOLERANCE}):")
        out.append("")
        out.append("| N | 1 thread | 2 threads | 2 ÷ 1 | both threads ran in parallel |")
        out.append("| --- | --- | --- | --- | --- |")
        for n in SIZES:
            if n in calib:
                one, two, ratio = calib[n]
                parallel = ratio <= PARALLEL_TOLERANCE
                ok = ok and parallel
                out.append(f"| {n} | {ns(one)} | {ns(two)} | {ratio:.2f} | "
                           f"{'yes' if parallel else 'NO: 2-thread rows invalid'} |")
        out.append("")

    out.append("<details><summary>Every median, floors included</summary>")
    out.append("")
    for group in ["pick_round_robin", "pick_random", "pick_hash", "request", "two_threads"]:
        rows = results.get(group)
        if not rows:
            continue
        out.append(f"**{GROUP_TITLES.get(group, group)}** (`{group}`)")
        out.append("")
        out.append("| bench | N = 8 | N = 64 | N = 1024 |")
        out.append("| --- | --- | --- | --- |")
        for name in sorted(rows, key=lambda f: (not f.startswith(("floor", "calibration")), f)):
            out.append(f"| {name} | " + " | ".join(ns(rows[name].get(n)) for n in SIZES) + " |")
        out.append("")
    out.append("</details>")

    print("\n".join(out))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

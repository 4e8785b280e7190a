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
# round than on 1 thread. Two threads that share one core take 2× as long; the 1-thread
# loop alone varies by ±10% between its repeats in one run (9.3–11.4 ns on the README's
# machine), so a round within 25% of the 1-thread one counts as no slowdown. Above this
# ratio the two threads did not run in parallel and the 2-thread rows of that N say
# nothing about the balancers.
PARALLEL_TOLERANCE = 1.25

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
     "tower-lb PowerOfTwoChoices", "tower p2c PendingRequests", 0.35),
    ("request", "request: our `Balance` PeakEwma vs tower p2c `PeakEwma`",
     "tower-lb PeakEwma", "tower p2c PeakEwma", 0.35),
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

CALIBRATIONS = ["before", "after"]


def calibration_name(when, threads):
    return f"calibration {when}: RNG loop on {threads} thread(s)"

GROUP_TITLES = {
    "pick_round_robin": "Pick latency, round robin (ns per pick, 1 thread)",
    "pick_random": "Pick latency, random (ns per pick, 1 thread)",
    "pick_hash": "Pick latency, hashing a 16-byte key (ns per pick, 1 thread)",
    "request": "Request overhead: ready + call + await (ns per request, current-thread runtime)",
    "two_threads": "2 threads sharing one balancer (ns per round: each thread makes one pick)",
    "request_breakdown": "Where our request time goes (ns per operation)",
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
    """{N: [(when, 1-thread, 2-thread, ratio)]} of the two_threads group."""
    rows = results.get("two_threads", {})
    out = {}
    for n in SIZES:
        for when in CALIBRATIONS:
            one = rows.get(calibration_name(when, 1), {}).get(n)
            two = rows.get(calibration_name(when, 2), {}).get(n)
            if one is not None and two is not None:
                out.setdefault(n, []).append((when, one, two, two / one))
    return out


def parallel(checks):
    return bool(checks) and all(ratio <= PARALLEL_TOLERANCE for _, _, _, ratio in checks)


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
            if group == "two_threads" and not parallel(calib.get(n)):
                note = " (threads not parallel: invalid)"
            cells.append(f"{ns(o)} / {ns(t)} = **{ratio:.2f}×**{mark}{note}")
        out.append(f"| {label} | ≤ {target:g}× | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Each cell: ours / theirs = ours ÷ theirs (medians); ✗ marks a missed target.")
    out.append("")

    if calib:
        out.append("Parallelism check of the 2-thread rows: a per-thread RNG loop (no shared "
                   "memory) on 1 and on 2 threads, before and after each N's rows; the rows "
                   f"are valid when 2 threads ÷ 1 thread ≤ {PARALLEL_TOLERANCE} both times.")
        out.append("")
        out.append("| N | when | 1 thread | 2 threads | 2 ÷ 1 | threads ran in parallel |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for n in SIZES:
            for when, one, two, ratio in calib.get(n, []):
                good = ratio <= PARALLEL_TOLERANCE
                ok = ok and good
                out.append(f"| {n} | {when} | {ns(one)} | {ns(two)} | {ratio:.2f} | "
                           f"{'yes' if good else '**no**: this N is invalid'} |")
        out.append("")

    out.append("<details><summary>Every median, floors included</summary>")
    out.append("")
    for group in ["pick_round_robin", "pick_random", "pick_hash", "request",
                  "request_breakdown", "two_threads"]:
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

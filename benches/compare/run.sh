#!/bin/sh
# Runs the side-by-side benches one criterion group at a time, each started when the
# machine is quiet, then prints the report. On a small shared machine this keeps other
# work out of most groups; every group still holds ours and theirs, so a disturbance
# hits both sides of a ratio about equally.
#
#   CARGO_TARGET_DIR=/tmp/target-compare sh run.sh [extra criterion args]
#
# Environment: CARGO_TARGET_DIR (default ./target); QUIET_BUSY, the CPU share (percent of
# all cores, sampled over 3 s) under which a group may start (default 15); QUIET_WAIT,
# how many seconds to wait for it at most before starting anyway (default 600); BENCH_GROUPS,
# the groups to run (default all, in the order below; `group/N` runs one N of a group:
# the 2-thread rows are run one N at a time, so that each waits for both cores to be
# free).
set -eu
cd "$(dirname "$0")"
TARGET="${CARGO_TARGET_DIR:-target}"
QUIET_BUSY="${QUIET_BUSY:-15}"
QUIET_WAIT="${QUIET_WAIT:-600}"
BENCH_GROUPS="${BENCH_GROUPS:-pick_round_robin pick_random pick_hash request request_breakdown two_threads/8 two_threads/64 two_threads/1024}"
ARGS="--warm-up-time 1 --measurement-time 3 --noplot $*"

# Percent of all CPU time spent busy over the next 3 seconds.
busy() {
    a=$(head -1 /proc/stat)
    sleep 3
    b=$(head -1 /proc/stat)
    echo "$a
$b" | awk '{ idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i;
             if (NR == 1) { i0 = idle; t0 = total } else { i1 = idle; t1 = total } }
           END { printf "%d", 100 * (1 - (i1 - i0) / (t1 - t0)) }'
}

cargo bench --no-run >/dev/null
for group in $BENCH_GROUPS; do
    waited=0
    while [ "$(busy)" -ge "$QUIET_BUSY" ] && [ "$waited" -lt "$QUIET_WAIT" ]; do
        sleep 7
        waited=$((waited + 10))
    done
    echo "== $group: start $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg), waited ${waited}s" >&2
    case "$group" in
        */*) filter="^${group%%/*}/.*/${group#*/}\$" ;;
        *) filter="^$group/" ;;
    esac
    log="$TARGET/compare-$(echo "$group" | tr / -).log"
    # shellcheck disable=SC2086
    cargo bench --bench compare -- "$filter" $ARGS >"$log" 2>&1
    echo "== $group: end   $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
python3 report.py "$TARGET/criterion"

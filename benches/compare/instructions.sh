#!/bin/sh
# User-space instructions per request of NGINX and our proxies, under valgrind's
# callgrind (outside CI): a measure that other jobs on the machine do not move, unlike
# rps. Each proxy runs under callgrind on core 0 beside three NGINX backends; wrk (one
# thread, 16 connections, core 1) warms it for 3 s, the counters are zeroed, wrk runs
# 5 s more, and the instructions counted since, divided by wrk's requests, are printed.
# The kernel's share (the system calls, the same for all here) is not counted.
#
#   sh benches/compare/instructions.sh
#
# Needs `valgrind`, `nginx-light`, `wrk`, `taskset`, `python3`; builds the proxies.
# Environment: CARGO_TARGET_DIR (default ./target). Every process it starts, it stops.
set -eu
cd "$(dirname "$0")/../.."
TARGET="${CARGO_TARGET_DIR:-target}"
# Absolute: each proxy is started from the scratch directory.
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in valgrind callgrind_control wrk taskset python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "instructions.sh: $tool is missing" >&2; exit 2; }
done
cargo build --release --features http,tokio,metrics --example http_proxy --example tcp_proxy >&2

WORK=$(mktemp -d)
PIDS=""
cleanup() {
    for pid in $PIDS; do kill "$pid" 2>/dev/null || true; done
    for pid in $PIDS; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

set -- $(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
B1=$1 B2=$2 B3=$3 FRONT=$4
wait_port() {
    python3 -c '
import socket, sys, time
deadline = time.time() + 30
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close(); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("nothing listens on port " + sys.argv[1])' "$1"
}

cat >"$WORK/backends.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/backends.pid; error_log $WORK/backends.err warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$B1 reuseport; listen 127.0.0.1:$B2 reuseport; listen 127.0.0.1:$B3 reuseport;
        location / { return 200 "ok\n"; }
    }
}
CONF
taskset -c 1 "$NGINX" -p "$WORK" -c "$WORK/backends.conf" &
PIDS="$PIDS $!"
for p in $B1 $B2 $B3; do wait_port "$p"; done

cat >"$WORK/nginx.conf" <<CONF
master_process off; worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_requests 1000000;
    upstream backends { server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3; keepalive 64; }
    server {
        listen 127.0.0.1:$FRONT;
        location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CONF
# The access logs off, as in proxy.sh (valgrind follows no `env` into its child).
export RUST_LOG=warn
BACKENDS="--backend 127.0.0.1:$B1 --backend 127.0.0.1:$B2 --backend 127.0.0.1:$B3"

measure() { # $1: label, then the proxy's command line
    label=$1
    shift
    (cd "$WORK" && exec taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$@") \
        >"$WORK/proxy.log" 2>&1 &
    pid=$!
    wait_port "$FRONT"
    taskset -c 1 wrk -t1 -c16 -d3s "http://127.0.0.1:$FRONT/" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    taskset -c 1 wrk -t1 -c16 -d5s "http://127.0.0.1:$FRONT/" >"$WORK/wrk.out"
    # The dump covers the 5 s since the zeroing: `cg.out.1` ("part 1").
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    requests=$(grep -o '[0-9]* requests in' "$WORK/wrk.out" | cut -d' ' -f1)
    instructions=$(grep -E '^(summary|totals):' "$WORK/cg.out.1" | head -1 | awk '{print $2}')
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "| $label | $requests | $((instructions / requests)) |"
    rm -f "$WORK"/cg.out*
}

echo "# $(date -u +%FT%TZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| proxy | requests under callgrind | user-space instructions per request |"
echo "| --- | ---: | ---: |"
measure "nginx (round robin, upstream keep-alive)" "$NGINX" -p "$WORK" -c "$WORK/nginx.conf"
# shellcheck disable=SC2086
measure "http_proxy --strategy round-robin" "$TARGET/release/examples/http_proxy" \
    --listen "127.0.0.1:$FRONT" --strategy round-robin $BACKENDS
# shellcheck disable=SC2086
measure "http_proxy --strategy p2c" "$TARGET/release/examples/http_proxy" \
    --listen "127.0.0.1:$FRONT" --strategy p2c $BACKENDS
# shellcheck disable=SC2086
measure "tcp_proxy --strategy round-robin (keep-alive)" "$TARGET/release/examples/tcp_proxy" \
    --listen "127.0.0.1:$FRONT" --strategy round-robin $BACKENDS

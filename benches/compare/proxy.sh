#!/bin/sh
# Our proxies beside NGINX and HAProxy on the same backends, one table (outside CI).
#
#   sh benches/compare/proxy.sh            # from the repository root or anywhere
#
# Needs Debian's `nginx-light`, `haproxy` and `wrk` (it installs nothing itself:
# `apt-get install -y nginx-light haproxy wrk`), `python3` (free ports), `taskset`
# (util-linux) and a release build of the two example proxies (built here with cargo).
#
# The rig: three backends (one NGINX process, one worker, answering `200 ok` on three
# loopback ports), then each proxy in turn on core 0 with one worker — NGINX
# (`worker_processes 1`, upstream keep-alive), HAProxy (`nbthread 1`, `mode http` /
# `mode tcp`), `examples/http_proxy` and `examples/tcp_proxy` (tokio on one core, access
# log off: `RUST_LOG=warn`) — and wrk on core 1 (one thread, `CONNS` connections,
# `SECS` seconds, after a `WARM`-second warm-up). Layer 7 rows run round robin and the
# least-loaded pair (NGINX `least_conn`, HAProxy `leastconn`, ours `p2c`); layer 4 rows
# run keep-alive (one connection carries many requests) and new connections (`Connection:
# close`, a TCP connection per request). The `side-by-side` layer 7 rows run NGINX and
# `http_proxy` at the same time on core 0, each with its own wrk on core 1: both meet
# the same machine, so their ratio is the steadiest of the table. Every process it
# starts, it stops (also on ^C).
#
# Besides wrk's rate and latency, each row has the proxy's CPU time per request (user +
# system, its processes' own counters, from /proc): on a machine other jobs share, the
# rate follows the share of core 0 the proxy gets, while its CPU time per request
# moves much less. ROUNDS > 1 measures each row that many times, the proxies of a test
# taking turns, and reports the median of each column.
#
# Environment: CONNS (default 64), SECS (default 10), WARM (default 2), ROUNDS (1),
# PROXY_CORE (0), LOAD_CORE (1), CARGO_TARGET_DIR (default ./target).
set -eu
cd "$(dirname "$0")/../.."
CONNS="${CONNS:-64}"
SECS="${SECS:-10}"
WARM="${WARM:-2}"
ROUNDS="${ROUNDS:-1}"
PROXY_CORE="${PROXY_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-1}"
TARGET="${CARGO_TARGET_DIR:-target}"

for tool in nginx haproxy wrk taskset python3; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "proxy.sh: $tool is missing (apt-get install -y nginx-light haproxy wrk)" >&2
        exit 2
    fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

cargo build --release --features http,tokio,metrics --example http_proxy --example tcp_proxy >&2
HTTP_PROXY="$TARGET/release/examples/http_proxy"
TCP_PROXY="$TARGET/release/examples/tcp_proxy"

WORK=$(mktemp -d)
PIDS=""
stop() {
    for pid in $PIDS; do kill "$pid" 2>/dev/null || true; done
    for pid in $PIDS; do wait "$pid" 2>/dev/null || true; done
    PIDS=""
}
cleanup() {
    stop
    if [ -n "${BACKENDS_PID:-}" ]; then
        kill "$BACKENDS_PID" 2>/dev/null || true
        wait "$BACKENDS_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Free loopback ports, from the kernel (bound to port 0, then released).
ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Waits until something accepts on 127.0.0.1:$1 (at most 10 s).
wait_port() {
    python3 - "$1" <<'EOF'
import socket, sys, time
deadline = time.time() + 10
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("nothing listens on port " + sys.argv[1])
EOF
}

set -- $(ports 5)
B1=$1 B2=$2 B3=$3 FRONT=$4 FRONT2=$5

# The backends: one NGINX, one worker, three ports.
cat >"$WORK/backends.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backends.pid;
error_log $WORK/backends.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$B1 reuseport; listen 127.0.0.1:$B2 reuseport; listen 127.0.0.1:$B3 reuseport;
        location / { return 200 "ok\n"; }
    }
}
EOF
taskset -c "$LOAD_CORE" "$NGINX" -p "$WORK" -c "$WORK/backends.conf" &
BACKENDS_PID=$!
for p in $B1 $B2 $B3; do wait_port "$p"; done

# CPU time (clock ticks, user + system) of process $1 and its children so far.
cpu_ticks() {
    ticks=0
    for pid in "$1" $(pgrep -P "$1" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        ticks=$((ticks + t))
    done
    echo "$ticks"
}

# One wrk run against 127.0.0.1:$1 with extra wrk arguments, the proxy being process
# $2; prints "rps p50_ms p99_ms non2xx cpu_us_per_request".
load() {
    port=$1 pid=$2
    shift 2
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${WARM}s" "$@" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    before=$(cpu_ticks "$pid")
    taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "$@" "http://127.0.0.1:$port/" >"$WORK/wrk.$port.out" 2>&1 || true
    after=$(cpu_ticks "$pid")
    python3 - "$WORK/wrk.$port.out" "$((after - before))" "$(getconf CLK_TCK)" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
done = re.search(r"(\d+) requests in", text)
cpu_us = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / int(done.group(1)) if done else float("nan")
print("%.0f %.3f %.3f %s %.1f" % (float(rps.group(1)) if rps else float("nan"), ms("50%"), ms("99%"),
                                  errors.group(1) if errors else "0", cpu_us))
EOF
}

# Starts a proxy on core $PROXY_CORE: "$@" is its command line; waits for port $FRONT.
front() {
    taskset -c "$PROXY_CORE" "$@" >"$WORK/front.log" 2>&1 &
    FRONT_PID=$!
    PIDS="$PIDS $!"
    wait_port "$FRONT"
}

nginx_conf() { # $1: balancing directive ("" or least_conn;)
    cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backends {
        $1
        server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$FRONT;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

haproxy_conf() { # $1: mode (http|tcp), $2: balance (roundrobin|leastconn)
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
defaults
    mode $1
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    $( [ "$1" = http ] && echo "option http-keep-alive" )
frontend front
    bind 127.0.0.1:$FRONT
    default_backend backends
backend backends
    balance $2
    $( [ "$1" = http ] && echo "http-reuse always" )
    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2
    server b3 127.0.0.1:$B3
EOF
}

ROWS="$WORK/rows"
: >"$ROWS"
row() { # $1: test, $2: proxy, then the load arguments
    test=$1 proxy=$2
    shift 2
    echo "$test $proxy $(load "$FRONT" "$FRONT_PID" "$@")" >>"$ROWS"
    echo "  $test $proxy: $(tail -1 "$ROWS" | cut -d' ' -f3-)" >&2
    stop
}
BACKEND_ARGS="--backend 127.0.0.1:$B1 --backend 127.0.0.1:$B2 --backend 127.0.0.1:$B3"

# Each test: its proxies in turn, ROUNDS times.
l7() { # $1: test, $2: NGINX directive, $3: HAProxy balance, $4: our strategy
    round=1
    while [ "$round" -le "$ROUNDS" ]; do
        nginx_conf "$2"
        front "$NGINX" -p "$WORK" -c "$WORK/nginx.conf"
        row "$1" nginx
        haproxy_conf http "$3"
        front "$HAPROXY" -f "$WORK/haproxy.cfg"
        row "$1" haproxy
        # shellcheck disable=SC2086
        front env RUST_LOG=warn "$HTTP_PROXY" --listen "127.0.0.1:$FRONT" --strategy "$4" $BACKEND_ARGS
        row "$1" tower-lb
        round=$((round + 1))
    done
}

echo "== layer 7: round robin" >&2
l7 l7-round-robin "" roundrobin round-robin
echo "== layer 7: least loaded" >&2
l7 l7-least-loaded "least_conn;" leastconn p2c

# Side by side: NGINX and ours on core 0 at the same time, each loaded by its own wrk on
# core 1, both runs starting together. One after the other, a row's rate follows
# whatever else the machine does during its seconds (±10 % here between runs); side
# by side, both proxies meet the same conditions and compete for the same core, so
# their ratio is steadier. The rates are each about half of a row alone.
together() { # $1: test, $2: NGINX directive, $3: our strategy
    round=1
    while [ "$round" -le "$ROUNDS" ]; do
        nginx_conf "$2"
        front "$NGINX" -p "$WORK" -c "$WORK/nginx.conf"
        nginx_pid=$FRONT_PID
        # shellcheck disable=SC2086
        taskset -c "$PROXY_CORE" env RUST_LOG=warn "$HTTP_PROXY" --listen "127.0.0.1:$FRONT2" \
            --strategy "$3" $BACKEND_ARGS >"$WORK/front2.log" 2>&1 &
        ours_pid=$!
        PIDS="$PIDS $ours_pid"
        wait_port "$FRONT2"
        load "$FRONT" "$nginx_pid" >"$WORK/together.nginx" &
        first=$!
        load "$FRONT2" "$ours_pid" >"$WORK/together.ours"
        wait "$first"
        echo "$1 nginx $(cat "$WORK/together.nginx")" >>"$ROWS"
        echo "$1 tower-lb $(cat "$WORK/together.ours")" >>"$ROWS"
        echo "  $1: nginx $(cat "$WORK/together.nginx"); tower-lb $(cat "$WORK/together.ours")" >&2
        stop
        round=$((round + 1))
    done
}

echo "== layer 7 side by side with NGINX" >&2
together l7-round-robin-side-by-side "" round-robin
together l7-least-loaded-side-by-side "least_conn;" p2c

echo "== layer 4: keep-alive and new connections" >&2
for mode in keep-alive new-connection; do
    if [ "$mode" = new-connection ]; then set -- -H "Connection: close"; else set --; fi
    round=1
    while [ "$round" -le "$ROUNDS" ]; do
        haproxy_conf tcp roundrobin
        front "$HAPROXY" -f "$WORK/haproxy.cfg"
        row "l4-$mode" haproxy "$@"
        # shellcheck disable=SC2086
        front env RUST_LOG=warn "$TCP_PROXY" --listen "127.0.0.1:$FRONT" --strategy round-robin $BACKEND_ARGS
        row "l4-$mode" tower-lb "$@"
        round=$((round + 1))
    done
done

echo "# $(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# wrk -t1 -c$CONNS -d${SECS}s on core $LOAD_CORE; each proxy on core $PROXY_CORE with one worker; median of $ROUNDS round(s)"
python3 - "$ROWS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
runs = {}
for test, proxy, rps, p50, p99, errors, cpu in rows:
    runs.setdefault(test, {}).setdefault(proxy, []).append(
        (float(rps), float(p50), float(p99), int(errors), float(cpu)))
print("| test | proxy | rps | p50 ms | p99 ms | non-2xx | CPU µs/req | rps ours ÷ theirs | p99 ours ÷ theirs | CPU/req ours ÷ theirs |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for test, proxies in runs.items():
    by = {}
    for proxy, rs in proxies.items():
        rps, p50, p99, _, cpu = (statistics.median(col) for col in zip(*rs))
        by[proxy] = (rps, p50, p99, sum(r[3] for r in rs), cpu)
    ours = by.get("tower-lb")
    for proxy, (rps, p50, p99, errors, cpu) in by.items():
        if ours and proxy != "tower-lb":
            ratio = "| %.2f | %.2f | %.2f" % (ours[0] / rps, ours[2] / p99, ours[4] / cpu)
        else:
            ratio = "| | |"
        print("| %s | %s | %.0f | %.3f | %.3f | %d | %.1f %s |" % (test, proxy, rps, p50, p99, errors, cpu, ratio))
EOF

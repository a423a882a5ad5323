#!/usr/bin/env bash
# Applying a large configuration while the edge serves: how long an apply takes, what the
# edge holds in memory, whether swapped-out snapshots are freed, and what an apply does to
# the serving latency.
#
#   cargo build --release -p zeitwork && bash bench/edge-apply.sh
#
# ROUTERS routers (default 10000), each with its own service, in a file the edge watches.
# The edge runs on CPU 0; nginx (the origin) and wrk on CPU 1. Steps:
#   1. start the edge on the file; the first apply's time and the RSS after it;
#   2. SWAPS applies (default 100), each a change of one router's rule, one at a time: the
#      median and max apply time, and the RSS after them (old snapshots freed: within 10 %);
#   3. wrk for DURATION seconds without applies, then with an apply every APPLY_EVERY
#      seconds (default 1): p99 of
#      each and their ratio.
# EDGE_ENV: environment for the edge process (e.g. EDGE_ENV=MALLOC_ARENA_MAX=1).
set -euo pipefail
ROUTERS=${ROUTERS:-10000}
SWAPS=${SWAPS:-100}
DURATION=${DURATION:-10}
APPLY_EVERY=${APPLY_EVERY:-1}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/zeitwork}
for t in nginx wrk taskset; do command -v $t >/dev/null || { echo "missing $t: run bash ../shared/bench/setup.sh" >&2; exit 1; }; done
[ -x "$BIN" ] || { echo "build first: cargo build --release -p zeitwork" >&2; exit 1; }

dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
mkdir -p "$dir/www"
printf 'hello from origin' > "$dir/www/index.html"
chmod -R a+rX "$dir"
cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:9301 reuseport backlog=4096; root $dir/www; }
}
NGINX

# $1: the rule of router app-1 (changed on every swap)
config() {
    {
        echo "http:"
        echo "  routers:"
        echo "    app-1: {rule: \"$1\", service: app-1}"
        for i in $(seq 2 $((ROUTERS - 1))); do
            echo "    app-$i: {rule: \"Host(\`app-$i.example.com\`) && PathPrefix(\`/\`)\", service: app-$i}"
        done
        echo "    bench: {rule: \"Host(\`127.0.0.1\`) && PathPrefix(\`/\`)\", service: bench}"
        echo "  services:"
        for i in $(seq 1 $((ROUTERS - 1))); do
            echo "    app-$i: {loadBalancer: {servers: [{url: \"http://127.0.0.1:9301\"}]}}"
        done
        echo "    bench: {loadBalancer: {servers: [{url: \"http://127.0.0.1:9301\"}]}}"
    } > "$dir/next.yaml"
    mv "$dir/next.yaml" "$dir/dynamic.yaml"
}
config 'Host(`app-1.example.com`) && PathPrefix(`/v0`)'

taskset -c 1 nginx -c "$dir/nginx.conf" &
taskset -c 0 env ${EDGE_ENV:-} "$BIN" edge --config "$dir/dynamic.yaml" --http 127.0.0.1:9302 --admin 127.0.0.1:9303 \
    --workers 1 --log-format json 2>"$dir/edge.log" &
edge=$!
for _ in $(seq 300); do
    curl -fs -o /dev/null -H 'Host: 127.0.0.1' http://127.0.0.1:9302/ && break
    sleep 0.1
done
curl -fs -o /dev/null -H 'Host: 127.0.0.1' http://127.0.0.1:9302/ || { cat "$dir/edge.log" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$edge/status"; }
applies() { grep -c '"configuration change applied"' "$dir/edge.log" || true; }
first_ms=$(grep '"configuration applied"' "$dir/edge.log" | head -n 1 | sed 's/.*"build_ms":\([0-9.]*\).*/\1/')
rss0=$(rss)
echo "routers: $ROUTERS; first apply: build ${first_ms} ms; RSS after it: $((rss0 / 1024)) MiB"

# the file watcher polls; wait for each change to be applied before the next
swap() {
    local before
    before=$(applies)
    config "Host(\`app-1.example.com\`) && PathPrefix(\`/v$1\`)"
    for _ in $(seq 600); do
        [ "$(applies)" -gt "$before" ] && return 0
        sleep 0.05
    done
    echo "change $1 was not applied" >&2
    tail -n 5 "$dir/edge.log" >&2
    exit 1
}
for n in $(seq 1 "$SWAPS"); do swap "$n"; done
rss1=$(rss)
grep '"configuration change applied"' "$dir/edge.log" | sed 's/.*"total_ms":\([0-9.]*\).*/\1/' | sort -g > "$dir/totals"
grep '"configuration applied"' "$dir/edge.log" | tail -n +2 | sed 's/.*"build_ms":\([0-9.]*\).*/\1/' | sort -g > "$dir/builds"
pct() { awk -v p="$2" '{a[NR]=$1} END {i=int(NR*p); if (i<1) i=1; print a[i]}' "$1"; }
echo "$SWAPS applies: whole apply (read, parse, validate, build, swap) median $(pct "$dir/totals" 0.5) ms, max $(pct "$dir/totals" 1); build and swap alone median $(pct "$dir/builds" 0.5) ms, max $(pct "$dir/builds" 1)"
echo "RSS after $SWAPS applies: $((rss1 / 1024)) MiB ($(awk -v a="$rss0" -v b="$rss1" 'BEGIN {printf "%+.1f", (b - a) * 100 / a}') % from after the first)"

p99() { taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" --latency -H 'Host: 127.0.0.1' http://127.0.0.1:9302/ \
    | awk '/^ +99%/ {v=$2; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000}; print v}'; }
quiet=$(p99)
( n=$((SWAPS + 1)); end=$((SECONDS + DURATION)); while [ $SECONDS -lt $end ]; do config "Host(\`app-1.example.com\`) && PathPrefix(\`/w$n\`)"; n=$((n + 1)); sleep "$APPLY_EVERY"; done ) &
busy=$(p99)
wait $! 2>/dev/null || true
echo "serving p99 (wrk, 50 connections): ${quiet} ms without applies, ${busy} ms with an apply every ${APPLY_EVERY} s: ratio $(awk -v a="$quiet" -v b="$busy" 'BEGIN {printf "%.2f", b / a}')"

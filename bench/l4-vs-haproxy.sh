#!/usr/bin/env bash
# The L4 balancer beside HAProxy in `mode tcp`, in one run, on loopback.
#
#   cargo build --release -p zeitwork && bash bench/l4-vs-haproxy.sh
#
# An nginx origin serves a 17-byte body and a 1 MiB file. Each balancer forwards TCP to
# it with one worker thread pinned to CPU 0; origin and wrk share CPU 1. Two scenarios,
# ROUNDS rounds each, the balancers interleaved within a round:
#   conns   new connection per request (Connection: close), tiny body: connections/s
#   bulk    keep-alive, 1 MiB body: throughput (MiB/s)
# HAProxy runs twice: as configured by default, and with `option splice-auto` (the kernel
# moves the bytes with splice(2), as the zeitwork balancer does).
# Prints medians and the ratios zeitwork / HAProxy (above 1 is better than HAProxy).
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/zeitwork}
for t in nginx haproxy wrk taskset; do command -v $t >/dev/null || { echo "missing $t: run bash ../shared/bench/setup.sh" >&2; exit 1; }; done
[ -x "$BIN" ] || { echo "build first: cargo build --release -p zeitwork" >&2; exit 1; }

dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
mkdir -p "$dir/www"
printf 'hello from origin' > "$dir/www/tiny"
head -c 1048576 /dev/urandom > "$dir/www/1m"
chmod -R a+rX "$dir"   # nginx workers run unprivileged

cat > "$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:9201 reuseport backlog=4096; root $dir/www; }
}
NGINX
cat > "$dir/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 4500
defaults
  mode tcp
  timeout connect 3s
  timeout client 300s
  timeout server 300s
frontend f
  bind 127.0.0.1:9202
  default_backend b
backend b
  server o 127.0.0.1:9201
frontend fs
  bind 127.0.0.1:9205
  option splice-auto
  default_backend bs
backend bs
  option splice-auto
  server o 127.0.0.1:9201
HAP

taskset -c 1 nginx -c "$dir/nginx.conf" &
taskset -c 0 haproxy -f "$dir/haproxy.cfg" &
taskset -c 0 "$BIN" balancer --listen 127.0.0.1:9203 --backend 127.0.0.1:9201 --proxy-protocol off \
  --workers 1 --admin 127.0.0.1:9204 --max-connections 20000 2>"$dir/zeitwork.log" &
for port in 9201 9202 9203 9205; do
  ok=
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/1m" && { ok=1; break; }; sleep 0.1; done
  [ -n "$ok" ] || { echo "nothing answers 200 on port $port" >&2; cat "$dir"/*.err "$dir/zeitwork.log" >&2; exit 1; }
done

run() { # name port scenario -> one number
  local out
  case $3 in
    conns) out=$(taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" -H 'Connection: close' "http://127.0.0.1:$2/tiny")
           echo "$out" | awk '/Requests\/sec/ {print $2}' ;;
    bulk)  out=$(taskset -c 1 wrk -t1 -c8 -d"${DURATION}s" "http://127.0.0.1:$2/1m")
           echo "$out" | awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /KB/) {sub("KB","",v); v/=1024} else {sub("MB","",v)}; print v}' ;;
  esac
}

declare -A results
for scenario in conns bulk; do
  for r in $(seq "$ROUNDS"); do
    for target in haproxy:9202 haproxy_splice:9205 zeitwork:9203 direct:9201; do
      name=${target%%:*}; port=${target##*:}
      v=$(run "$name" "$port" "$scenario")
      echo "round $r $scenario $name $v"
      results[$scenario.$name]+="$v "
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| scenario | unit | direct | HAProxy (mode tcp) | HAProxy, splice-auto | zeitwork balancer | zeitwork / HAProxy | zeitwork / HAProxy splice-auto |"
echo "|---|---|---|---|---|---|---|---|"
for scenario in conns bulk; do
  unit=$([ $scenario = conns ] && echo "conn/s" || echo "MiB/s")
  d=$(echo "${results[$scenario.direct]}" | median)
  h=$(echo "${results[$scenario.haproxy]}" | median)
  s=$(echo "${results[$scenario.haproxy_splice]}" | median)
  z=$(echo "${results[$scenario.zeitwork]}" | median)
  ratio=$(awk -v z="$z" -v h="$h" 'BEGIN {printf "%.2f", z / h}')
  ratio_s=$(awk -v z="$z" -v h="$s" 'BEGIN {printf "%.2f", z / h}')
  echo "| $scenario | $unit | $d | $h | $s | $z | $ratio | $ratio_s |"
done

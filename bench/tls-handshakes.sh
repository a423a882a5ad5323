#!/usr/bin/env bash
# Full TLS handshakes: nginx, HAProxy and `zeitwork edge` each terminating TLS 1.3
# (TLS_AES_128_GCM_SHA256, a P-256 certificate) on CPU 1, `openssl s_time -new` (a full
# handshake per connection, no resumption) on CPU 0, ROUNDS rounds of SECS seconds,
# interleaved. Reports handshakes per second and per second of the proxy's CPU (read from
# /proc, so a client that is the bottleneck does not flatter anyone), and both as ratios
# to nginx. Loopback only. Needs nginx, haproxy, openssl (bash ../shared/bench/setup.sh)
# and a release build (cargo build --release -p zeitwork).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ZEITWORK_BIN:-$here/../target/release/zeitwork}
rounds=${ROUNDS:-3}
secs=${SECS:-5}
dir=$(mktemp -d /tmp/zw-handshakes.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -days 2 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" >"$dir/combined.pem"

cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 4096; }
http {
    access_log off;
    ssl_protocols TLSv1.3;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
    ssl_session_tickets off;
    ssl_session_cache off;
    server {
        listen 127.0.0.1:9211 ssl backlog=4096;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        return 200 "ok\n";
    }
}
CONF
cat >"$dir/haproxy.cfg" <<CONF
global
    nbthread 1
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
    tune.ssl.cachesize 0
defaults
    mode http
    timeout client 10s
    timeout connect 5s
    timeout server 10s
frontend tls
    bind 127.0.0.1:9212 ssl crt $dir/combined.pem
    http-request return status 200 content-type text/plain string "ok"
CONF
cat >"$dir/dynamic.yaml" <<CONF
http:
  routers:
    r: {rule: "PathPrefix(\`/\`)", service: s, tls: {}}
  services:
    s: {loadBalancer: {servers: [{url: "http://127.0.0.1:9"}]}}
tls:
  stores:
    default:
      defaultCertificate: {certFile: "$dir/cert.pem", keyFile: "$dir/key.pem"}
  options:
    default: {minVersion: VersionTLS13, cipherSuites: [TLS_AES_128_GCM_SHA256]}
CONF

taskset -c 1 nginx -c "$dir/nginx.conf" -g 'daemon off;' & pids+=($!)
taskset -c 1 haproxy -f "$dir/haproxy.cfg" -db & pids+=($!)
taskset -c 1 "$bin" edge --config "$dir/dynamic.yaml" --http 127.0.0.1:9214 --admin 127.0.0.1:9182 --workers 1 2>"$dir/zeitwork.log" & pids+=($!)
sleep 2

# The process that does the handshakes: nginx's worker, HAProxy itself, the edge itself.
proxy_pid() {
    case $1 in
        nginx) pgrep -P "${pids[0]}" | head -n 1 ;;
        haproxy) echo "${pids[1]}" ;;
        zeitwork) echo "${pids[2]}" ;;
    esac
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

declare -A total_hs total_cpu
for name in nginx haproxy zeitwork; do total_hs[$name]=0; total_cpu[$name]=0; done
for round in $(seq 1 "$rounds"); do
    for name in nginx haproxy zeitwork; do
        case $name in nginx) port=9211 ;; haproxy) port=9212 ;; zeitwork) port=9214 ;; esac
        pid=$(proxy_pid $name)
        before=$(cpu_ticks "$pid")
        out=$(taskset -c 0 openssl s_time -connect "127.0.0.1:$port" -new -time "$secs" 2>/dev/null)
        after=$(cpu_ticks "$pid")
        hs=$(echo "$out" | awk '/connections in/ && !seen {print $1; seen=1}')
        cpu=$(( after - before ))
        echo "round $round $name: $hs handshakes in ${secs}s, proxy CPU $(awk -v t=$cpu -v h=$hz 'BEGIN{printf "%.2f", t/h}') s"
        total_hs[$name]=$(( total_hs[$name] + hs ))
        total_cpu[$name]=$(( total_cpu[$name] + cpu ))
    done
done
echo
echo "| target | handshakes/s | ÷ nginx | handshakes per proxy CPU-s | ÷ nginx |"
echo "|---|---|---|---|---|"
for name in nginx haproxy zeitwork; do
    awk -v n=$name -v hs=${total_hs[$name]} -v cpu=${total_cpu[$name]} -v hz=$hz -v t=$(( rounds * secs )) \
        -v nhs=${total_hs[nginx]} -v ncpu=${total_cpu[nginx]} 'BEGIN{
        rate=hs/t; nrate=nhs/t; eff=(cpu>0)?hs/(cpu/hz):0; neff=(ncpu>0)?nhs/(ncpu/hz):0;
        printf "| %s | %.0f | %.2f | %.0f | %.2f |\n", n, rate, rate/nrate, eff, (neff>0)?eff/neff:0 }'
done

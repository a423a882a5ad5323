#!/usr/bin/env bash
# Deploy → first 200 through the balancer, and per-instance memory, on `zeitwork up`.
#
#   cargo build --release -p zeitwork && bash bench/deploy.sh [N]
#
# Starts `zeitwork up` (release build) in a temporary directory, deploys N one-replica
# Python apps one after the other with `zeitwork deploy` (which reports when the first
# 200 came back through the balancer), then prints the p50/p90/max of those times and the
# proportional memory (PSS) of the two `zeitwork-init` processes beside each isolated
# instance (shim + PID 1), which is what a process instance costs beyond the app.
# With ZEITWORK_QEMU_KERNEL and ZEITWORK_QEMU_MODULES set, it also deploys QEMU_N
# emulated microVMs from an OCI layout (busybox httpd).
set -euo pipefail
N=${1:-20}
QEMU_N=${QEMU_N:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/zeitwork
dir=$(mktemp -d)
trap 'kill -INT $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=127.0.0.1:$(port); http=127.0.0.1:$(port)
extra=()
if [ -n "${ZEITWORK_QEMU_KERNEL:-}" ]; then
  extra=(--qemu-accel tcg --qemu-kernel "$ZEITWORK_QEMU_KERNEL" --qemu-modules "$ZEITWORK_QEMU_MODULES")
fi
"$bin" up --data-dir "$dir/data" --api "$api" --http "$http" --edge 127.0.0.1:$(port) \
  --edge-admin 127.0.0.1:$(port) --ingress 127.0.0.1:$(port) "${extra[@]}" >"$dir/up.out" 2>"$dir/up.err" &
up_pid=$!
for _ in $(seq 100); do grep -q "backend added" "$dir/up.err" 2>/dev/null && break; sleep 0.1; done
cat >"$dir/app.py" <<'PY'
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "3"); self.end_headers(); self.wfile.write(b"ok\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
PY
z() { "$bin" "$1" --data-dir "$dir/data" --operator "http://$api" "${@:2}"; }
stats() { sort -n | awk '{a[NR]=$1} END {printf "n=%d p50=%d ms p90=%d ms max=%d ms\n", NR, a[int((NR+1)/2)], a[int(NR*0.9+0.5)], a[NR]}'; }
for i in $(seq "$N"); do
  z deploy "app$i" --domain "app$i.test" -- python3 "$dir/app.py" 2>/dev/null | sed -n 's/.*routed \([0-9]*\) ms.*/\1/p'
done >"$dir/process.ms"
echo "process driver, deploy → first 200 through the balancer: $(stats <"$dir/process.ms")"
pss=0; rss=0; count=0
for pid in $(pgrep -f "zeitwork-init --hostname inst-.* python3 $dir/app.py"); do
  kb=$(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup 2>/dev/null || echo 0)
  r=$(awk '/^Rss:/ {print $2}' /proc/$pid/smaps_rollup 2>/dev/null || echo 0)
  pss=$((pss + kb)); rss=$((rss + r)); count=$((count + 1))
done
instances=$((count / 2))
if [ "$instances" -gt 0 ]; then
  echo "zeitwork-init processes: $count for $instances instances; per instance (shim + PID 1): PSS $((pss / instances)) KiB, RSS $((rss / instances)) KiB"
fi
app_pss=0
for pid in $(pgrep -f "python3 $dir/app.py" | head -n "$N"); do
  kb=$(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup 2>/dev/null || echo 0)
  app_pss=$((app_pss + kb))
done
echo "for scale: the Python app itself, PSS $((app_pss / N)) KiB per instance"
if [ -n "${ZEITWORK_QEMU_KERNEL:-}" ]; then
  bash "$here/bench/oci-busybox.sh" "$dir/site.tar"
  for i in $(seq "$QEMU_N"); do
    z deploy "vm$i" --domain "vm$i.test" --runtime qemu --oci "$dir/site.tar" --port 8080 \
      -- /bin/busybox httpd -f -p 8080 -h /www 2>/dev/null | sed -n 's/.*routed \([0-9]*\) ms.*/\1/p'
    z destroy "vm$i" >/dev/null
  done >"$dir/qemu.ms"
  echo "qemu driver (emulated), deploy → first 200: $(stats <"$dir/qemu.ms")"
fi

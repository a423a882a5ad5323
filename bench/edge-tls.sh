#!/usr/bin/env bash
# Runs `zeitwork edge` terminating TLS as the extra target of the shared harness in its
# TLS mode (MODE=tls): the harness's certificate (BENCH_TLS_CERT / BENCH_TLS_KEY) for every
# name, TLS 1.3 with TLS_AES_128_GCM_SHA256 only — what the other proxies are pinned to —
# and one TLS router to the origin. Build first: cargo build --release -p zeitwork
#
#   MODE=tls EXTRA_NAME=zeitwork EXTRA_URL=https://127.0.0.1:9204 \
#   EXTRA_CMD="bash $PWD/bench/edge-tls.sh" bash ../shared/bench/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ZEITWORK_BIN:-$here/../target/release/zeitwork}
listen=${LISTEN:-127.0.0.1:9204}
cfg=${BENCH_RUN_DIR:-/tmp}/zeitwork-tls.yaml
cat >"$cfg" <<YAML
http:
  routers:
    bench: {rule: "PathPrefix(\`/\`)", service: bench, tls: {}}
  services:
    bench: {loadBalancer: {servers: [{url: "http://$BENCH_ORIGIN"}]}}
tls:
  stores:
    default:
      defaultCertificate: {certFile: "$BENCH_TLS_CERT", keyFile: "$BENCH_TLS_KEY"}
  options:
    default: {minVersion: VersionTLS13, cipherSuites: [TLS_AES_128_GCM_SHA256]}
YAML
exec "$bin" edge --config "$cfg" --http "$listen" --admin 127.0.0.1:9181 --workers "${BENCH_WORKERS:-1}"

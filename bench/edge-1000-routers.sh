#!/usr/bin/env bash
# Runs `zeitwork edge` as the extra target of the shared proxy benchmark harness, with a
# routing table of ROUTERS routers (default 1000), each with its own service, and metrics
# on (they always are). With MIDDLEWARES=1 every router runs a `rateLimit` (per client
# address, set high enough never to refuse) and a `headers` middleware (security headers
# and a custom one), the chain issue 12 measures. Build first: cargo build --release -p zeitwork
#
#   EXTRA_NAME=zeitwork EXTRA_URL=http://127.0.0.1:9104 \
#   EXTRA_CMD="bash $PWD/bench/edge-1000-routers.sh" bash ../shared/bench/run.sh
#
# ACCESS_LOG=PATH writes the JSON access log there (ACCESS_LOG=run: into the run's
# directory). The harness exports BENCH_ORIGIN, BENCH_WORKERS and BENCH_RUN_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${ZEITWORK_BIN:-$here/../target/release/zeitwork}
routers=${ROUTERS:-1000}
mw=""
[ "${MIDDLEWARES:-0}" = 1 ] && mw=", middlewares: [limit, secure]"
listen=${LISTEN:-127.0.0.1:9104}
cfg=${BENCH_RUN_DIR:-/tmp}/zeitwork-${routers}-routers.yaml

{
    echo "http:"
    echo "  routers:"
    # the benchmark's requests carry Host: 127.0.0.1:9104; the other routers are
    # decoys on other hosts, so the table is realistic in size and shape
    for i in $(seq 1 $((routers - 1))); do
        echo "    app-$i: {rule: \"Host(\`app-$i.example.com\`) && PathPrefix(\`/\`)\", service: app-$i$mw}"
    done
    echo "    bench: {rule: \"Host(\`127.0.0.1\`) && PathPrefix(\`/\`)\", service: bench$mw}"
    echo "  services:"
    for i in $(seq 1 $((routers - 1))); do
        echo "    app-$i: {loadBalancer: {servers: [{url: \"http://$BENCH_ORIGIN\"}]}}"
    done
    echo "    bench: {loadBalancer: {servers: [{url: \"http://$BENCH_ORIGIN\"}]}}"
    if [ -n "$mw" ]; then
        echo "  middlewares:"
        echo "    limit: {rateLimit: {average: 100000000, burst: 100000000}}"
        echo "    secure: {headers: {frameDeny: true, contentTypeNosniff: true, browserXssFilter: true, referrerPolicy: same-origin, stsSeconds: 31536000, customResponseHeaders: {X-Served-By: zeitwork}}}"
    fi
} >"$cfg"

log=()
case "${ACCESS_LOG:-}" in
    "") ;;
    run) log=(--access-log "${BENCH_RUN_DIR:-/tmp}/zeitwork-access.log") ;;
    *) log=(--access-log "$ACCESS_LOG") ;;
esac

exec "$bin" edge "${log[@]}" --config "$cfg" --http "$listen" --admin 127.0.0.1:9180 --workers "${BENCH_WORKERS:-1}"

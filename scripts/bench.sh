#!/usr/bin/env bash
# Gateway overhead benchmark: the same requests through gpt-api-proxy,
# through a minimal HTTP/1.1 proxy (`gap-bench proxy`, the floor) and
# directly against mock-upstream, on pinned cores; and the gateway's
# non-streaming path once more with a rate-limited key, with the limits kept
# in process and (if a Redis answers on 127.0.0.1:6379) in Redis. See
# docs/benchmark.md.
#
#   scripts/bench.sh            # everything (needs 2+ cores; valgrind and Redis optional)
#
# Knobs (environment):
#   BENCH_DURATION=5        seconds per measured load run
#   BENCH_RATES="2000 5000" open-loop rates (req/s)
#   BENCH_CONCURRENCY=64    closed-loop concurrency for max throughput
#   BENCH_TTFT_N=1000       streamed requests for the TTFT figure
#   BENCH_STREAM_RPS=100    streams/s for the per-chunk CPU figure (200 chunks each)
#   BENCH_CALLGRIND=1       0 skips the callgrind section
#   BENCH_CG_SMALL=200 BENCH_CG_BIG=1200   callgrind batch sizes
#   BENCH_KEEP=1            keep the temp dir (databases, logs, raw results)
#   BENCH_SKIP_BUILD=1      use the binaries already built (no cargo build)
#   LOAD_CORE=0 SERVICE_CORE=1             cores for the load generator / measured process
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${BENCH_DURATION:-5}
RATES=${BENCH_RATES:-"2000 5000"}
CONC=${BENCH_CONCURRENCY:-64}
TTFT_N=${BENCH_TTFT_N:-1000}
STREAM_RPS=${BENCH_STREAM_RPS:-100}
CALLGRIND=${BENCH_CALLGRIND:-1}
CG_SMALL=${BENCH_CG_SMALL:-200}
CG_BIG=${BENCH_CG_BIG:-1200}
LOAD_CORE=${LOAD_CORE:-0}
SERVICE_CORE=${SERVICE_CORE:-1}
CLK_TCK=$(getconf CLK_TCK)
OUT_DIR=$CARGO_TARGET_DIR/bench

say() { printf '==> %s\n' "$*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

command -v taskset >/dev/null || die "taskset (util-linux) is required"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 cores (one for the service, one for the load)"

if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
    say "using the release binaries already in $CARGO_TARGET_DIR/release (BENCH_SKIP_BUILD=1)"
else
    say "building release binaries"
    (cd "$ROOT" && cargo build --release -p gateway -p mock-upstream -p bench)
fi
BIN=$CARGO_TARGET_DIR/release
GAP=$BIN/gpt-api-proxy
MOCK=$BIN/mock-upstream
LOAD=$BIN/gap-bench

LOADAVG_START=$(loadavg)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gap-bench.XXXXXX")
RES=$TMP/results
mkdir -p "$RES" "$OUT_DIR"
PIDS=()
# The limits-on (Redis) runs keep the guard's counters under this prefix in
# the Redis at 127.0.0.1:6379; they are deleted before and after those runs.
REDIS_PREFIX=gapbench
REDIS_USED=0
redis_env=("GAP__REDIS__URL=redis://127.0.0.1:6379" "GAP__REDIS__KEY_PREFIX=$REDIS_PREFIX")
redis_up() { command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 ping 2>/dev/null)" = PONG ]; }
redis_cmds() { # commands the Redis server has processed so far (all clients)
    redis-cli -h 127.0.0.1 info stats 2>/dev/null | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }'
}
# redis_note WHAT BEFORE REQUESTS: how many commands Redis processed since BEFORE
redis_note() {
    local after
    after=$(redis_cmds)
    [ -n "$2" ] && [ -n "$after" ] || return 0
    say "[$1] Redis processed $((after - $2)) commands for $3 requests ($(awk -v c="$((after - $2))" -v n="$3" 'BEGIN { printf "%.2f", c / n }') per request, other clients included)"
    [ $((after - $2)) -ge "$3" ] || say "warning: fewer Redis commands than requests: the limits did not reach Redis"
}
redis_clear() {
    redis-cli -h 127.0.0.1 --scan --pattern "$REDIS_PREFIX:*" 2>/dev/null \
        | xargs -r redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
}
# Everything below runs in $TMP (all paths are absolute), so the gateway
# picks up no gpt-api-proxy.toml from the caller's directory.
cd "$TMP"

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$REDIS_USED" = 1 ]; then
        redis_clear
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# launch VAR LOG CMD... : start CMD in the background, its pid in $VAR.
launch() {
    local var=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    printf -v "$var" '%s' "$!"
}

# stop PID: SIGTERM and wait.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_addr LOG PATTERN PID TIMEOUT_S : echo the host:port after PATTERN once it appears.
wait_addr() {
    local log=$1 pat=$2 pid=$3 timeout=$4 i line
    for ((i = 0; i < timeout * 10; i++)); do
        line=$(grep -m1 -o "$pat http://[0-9.]*:[0-9]*" "$log" || true)
        if [ -n "$line" ]; then
            echo "${line##*http://}"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "process $pid exited before it was ready"; }
        sleep 0.1
    done
    cat "$log" >&2
    die "timed out waiting for '$pat' in $log"
}

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# Every gateway invocation (CLI and service) gets the same environment.
unset DATABASE_URL GAP_CONFIG
ADMIN_PW=benchpassword1
gap_env=(
    env
    "GAP__DATABASE__URL=sqlite://$TMP/bench.db"
    "GAP__SERVER__LISTEN=127.0.0.1:0"
    "GAP__SERVER__WORKERS=1"
    "GAP__LOG__LEVEL=warn"
    "GAP__ADMIN__PASSWORD=$ADMIN_PW"
    # the allocator settings the binary would otherwise set by re-executing
    # itself (which valgrind would not follow)
    "MIMALLOC_PURGE_DELAY=0"
    "MIMALLOC_ARENA_EAGER_COMMIT=0"
)
gap() { "${gap_env[@]}" "$GAP" "$@"; }

# ---------------------------------------------------------------- setup
say "starting mock-upstream on core $SERVICE_CORE"
# one Tokio worker, like the gateway with GAP__SERVER__WORKERS=1
launch MOCK_PID "$TMP/mock.log" env TOKIO_WORKER_THREADS=1 \
    taskset -c "$SERVICE_CORE" "$MOCK" --listen 127.0.0.1:0 --chunks 8 --chunk-delay-ms 0
MOCK_ADDR=$(wait_addr "$TMP/mock.log" "mock-upstream listening on" "$MOCK_PID" 30)
sleep 0.5
MOCK_IDLE_KB=$(status_kb "$MOCK_PID" VmRSS)

say "setting up the gateway database"
gap channel add --name mock --base-url "http://$MOCK_ADDR/v1" --key sk-bench --models gpt-4o-mini >/dev/null
# the same mock behind an Anthropic channel, for the translated path
gap channel add --name mock-anthropic --kind anthropic --base-url "http://$MOCK_ADDR/v1" \
    --key sk-bench --models claude-bench >/dev/null
gap price set claude-bench --input 0.15 --output 0.6 >/dev/null
# the administrator the service would create on an empty database (the CLI
# comes first here), for the management API call that creates the limited key
gap user add root --role root --password "$ADMIN_PW" >/dev/null
BENCH_UID=$(gap user add bench --balance-usd 1000000 | sed -n 's/^created user bench (id \([0-9]*\)).*/\1/p')
[ -n "$BENCH_UID" ] || die "user add printed no user id"
KEY=$(gap key create --user bench | tail -n1)
[ -n "$KEY" ] || die "key create printed no key"

say "starting gpt-api-proxy on core $SERVICE_CORE"
launch GW_PID "$TMP/gateway.log" "${gap_env[@]}" taskset -c "$SERVICE_CORE" "$GAP"
GW_ADDR=$(wait_addr "$TMP/gateway.log" "gpt-api-proxy listening on" "$GW_PID" 60)
sleep 0.5
GW_IDLE_KB=$(status_kb "$GW_PID" VmRSS)

GW_URL="http://$GW_ADDR/v1/chat/completions"
DIRECT_URL="http://$MOCK_ADDR/v1/chat/completions"

MSG='"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello, how are you today?"}]'
printf '{%s,"max_tokens":64}\n' "$MSG" >"$TMP/chat.json"
XMSG='"model":"claude-bench","messages":[{"role":"user","content":"Hello, how are you today?"}]'
printf '{%s,"max_tokens":64}\n' "$XMSG" >"$TMP/xl_chat.json"
printf '{%s,"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}}\n' "$XMSG" >"$TMP/xl_stream.json"
printf '{%s,"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}}\n' "$MSG" >"$TMP/stream.json"
printf '{%s,"stream":true,"stream_options":{"include_usage":true},"mock":{"chunks":200,"chunk_size":20}}\n' \
    "$MSG" >"$TMP/chunks.json"
printf '{%s,"stream":true,"stream_options":{"include_usage":true},"mock":{"chunks":200,"chunk_size":20,"chunk_delay_ms":1}}\n' \
    "$MSG" >"$TMP/chunks_paced.json"

# sanity: one request each way
curl -fsS --noproxy '*' -o /dev/null -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    --data-binary @"$TMP/chat.json" "$GW_URL" || die "a request through the gateway failed"
curl -fsS --noproxy '*' -o /dev/null -H "Authorization: Bearer sk-bench" -H 'Content-Type: application/json' \
    --data-binary @"$TMP/chat.json" "$DIRECT_URL" || die "a request to the mock failed"

# load SIDE METRIC MODE ARGS... : run the load generator on the load core.
load() {
    local side=$1 metric=$2 mode=$3 url key pid
    shift 3
    case $side in
        gateway) url=$GW_URL key=$KEY pid=$GW_PID ;;
        # the minimal proxy forwards the mock's key as it is
        proxy) url=$PX_URL key=sk-bench pid=$PX_PID ;;
        *) url=$DIRECT_URL key=sk-bench pid=$MOCK_PID ;;
    esac
    taskset -c "$LOAD_CORE" "$LOAD" "$mode" --url "$url" --key "$key" \
        --out "$RES/$metric.$side.json" "$@" --pid "$pid" --clk-tck "$CLK_TCK" >/dev/null 2>"$TMP/load.err" \
        || { cat "$TMP/load.err" >&2; die "load run $metric ($side) failed"; }
    sleep 0.5
}
ttft() {
    local side=$1 url key
    if [ "$side" = gateway ]; then url=$GW_URL key=$KEY; else url=$DIRECT_URL key=sk-bench; fi
    taskset -c "$LOAD_CORE" "$LOAD" ttft --url "$url" --key "$key" --body-file "$TMP/stream.json" \
        --n "$TTFT_N" --warmup 50 --out "$RES/ttft.$side.json" >/dev/null
    sleep 0.5
}

# the non-streaming runs: open loop at each rate, closed loop c=1 and c=$CONC
run_requests() {
    local side=$1 rps
    for rps in $RATES; do
        say "[$side] open loop $rps req/s for ${DURATION}s"
        load "$side" "rate$rps" rate --body-file "$TMP/chat.json" --rps "$rps" --duration "$DURATION" --warmup 1
    done
    say "[$side] closed loop c=1"
    load "$side" closed1 closed --body-file "$TMP/chat.json" --concurrency 1 --duration "$DURATION" --warmup 1
    say "[$side] closed loop c=$CONC"
    load "$side" "closed64" closed --body-file "$TMP/chat.json" --concurrency "$CONC" --duration "$DURATION" --warmup 1
}

run_side() {
    local side=$1
    run_requests "$side"
    say "[$side] stream TTFT x$TTFT_N"
    ttft "$side"
    say "[$side] streams of 200 chunks, back-to-back, $STREAM_RPS/s"
    load "$side" chunks rate --body-file "$TMP/chunks.json" --rps "$STREAM_RPS" --duration "$DURATION" --warmup 1
    say "[$side] streams of 200 chunks, 1 ms apart, $STREAM_RPS/s"
    load "$side" chunks_paced rate --body-file "$TMP/chunks_paced.json" --rps "$STREAM_RPS" --duration "$DURATION" --warmup 1
}

# ---------------------------------------------------------------- direct
# The mock alone on the service core, the load generator on the other.
taskset -a -p -c "$SERVICE_CORE" "$MOCK_PID" >/dev/null
run_side direct

# ---------------------------------------------------------------- gateway
# The gateway alone on the service core; the mock moves to the load core,
# so the gateway's CPU figures are not disturbed by the upstream's work.
taskset -a -p -c "$LOAD_CORE" "$MOCK_PID" >/dev/null
run_side gateway

printf '{"idle_rss_kb":%s,"peak_rss_kb":%s}\n' "$GW_IDLE_KB" "$(status_kb "$GW_PID" VmHWM)" >"$RES/mem.gateway.json"

# ---------------------------------------------------------------- translated
# OpenAI client -> Anthropic channel (same mock, Anthropic wire format), set
# against the pass-through path: the "gateway" column is the translated run,
# the "direct" column the pass-through run through the same gateway.
xl() {
    local metric=$1
    shift
    taskset -c "$LOAD_CORE" "$LOAD" rate --url "$GW_URL" --key "$KEY" \
        --out "$RES/$metric.json" "$@" --pid "$GW_PID" --clk-tck "$CLK_TCK" >/dev/null 2>"$TMP/load.err" \
        || { cat "$TMP/load.err" >&2; die "load run $metric failed"; }
    sleep 0.5
}
say "[translated] OpenAI client -> Anthropic channel, 2000 req/s"
xl xl_rate2000.gateway --body-file "$TMP/xl_chat.json" --rps 2000 --duration "$DURATION" --warmup 1
cp "$RES/rate2000.gateway.json" "$RES/xl_rate2000.direct.json"
say "[translated] streams of 8 chunks, 500/s, translated and pass-through"
xl xl_stream8.gateway --body-file "$TMP/xl_stream.json" --rps 500 --duration "$DURATION" --warmup 1
xl xl_stream8.direct --body-file "$TMP/stream.json" --rps 500 --duration "$DURATION" --warmup 1
printf '{"idle_rss_kb":%s,"peak_rss_kb":%s}\n' "$MOCK_IDLE_KB" "$(status_kb "$MOCK_PID" VmHWM)" >"$RES/mem.direct.json"

# ---------------------------------------------------------------- limits
# Abuse protection on the success path. Per-IP autoban is always on, so every
# gateway run above includes it; that is (a). Here the non-streaming requests
# at 5000 req/s go out once more with the plain key (a noise check, same
# process), then with a second key of the same user that has limits: RPM and
# TPM far above anything sent and 1000 requests at once, so every request
# takes a concurrency slot, counts against RPM and TPM and is never refused.
# The CLI cannot set limits, so the key comes from the management API.
LIMITS='{"rpm":100000000,"tpm":100000000000,"concurrency":1000}'
TOKEN=$(curl -fsS --noproxy '*' -H 'Content-Type: application/json' \
    -d "{\"username\":\"root\",\"password\":\"$ADMIN_PW\"}" "http://$GW_ADDR/api/auth/login" \
    | grep -o '"token":"[^"]*"' | cut -d'"' -f4) || true
[ -n "$TOKEN" ] || die "could not sign in as root through POST /api/auth/login"
resp=$(curl -fsS --noproxy '*' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d "{\"user_id\":$BENCH_UID,\"name\":\"bench-limits\",\"limits\":$LIMITS}" "http://$GW_ADDR/api/keys") \
    || die "POST /api/keys with limits failed"
LKEY=$(printf '%s' "$resp" | grep -o '"key":"[^"]*"' | cut -d'"' -f4)
{ [ -n "$LKEY" ] && printf '%s' "$resp" | grep -q '"concurrency":1000'; } \
    || die "the limited key was not created as asked: $resp"

# limits_rate VARIANT KEY [ARGS...]: 5000 req/s of chat.json at the gateway
# ($GW_PID) with KEY, into rate5000_VARIANT.gateway.json
limits_rate() {
    local variant=$1 key=$2
    shift 2
    curl -fsS --noproxy '*' -o /dev/null -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        --data-binary @"$TMP/chat.json" "$GW_URL" || die "a request with the $variant key failed"
    taskset -c "$LOAD_CORE" "$LOAD" rate --url "$GW_URL" --key "$key" --body-file "$TMP/chat.json" \
        --rps 5000 --duration "$DURATION" --warmup 1 --out "$RES/rate5000_$variant.gateway.json" \
        --pid "$GW_PID" --clk-tck "$CLK_TCK" "$@" >/dev/null 2>"$TMP/load.err" \
        || { cat "$TMP/load.err" >&2; die "load run rate5000 ($variant) failed"; }
    grep -q '"errors":0' "$RES/rate5000_$variant.gateway.json" \
        || say "warning: the $variant run had errors (see first_error in rate5000_$variant.gateway.json)"
    sleep 0.5
}
say "[limits] plain key again, open loop 5000 req/s for ${DURATION}s (noise check)"
limits_rate limits_off "$KEY"
say "[limits] key with limits, in-process guard, open loop 5000 req/s for ${DURATION}s"
limits_rate limits_mem "$LKEY"
stop "$GW_PID"

# The same with the guard's counters in Redis: a new gateway process with
# GAP__REDIS__URL, on the service core like the others (the Redis server is
# not ours: it stays where it runs, and its CPU is reported on its own).
if redis_up; then
    REDIS_USED=1
    redis_clear
    REDIS_PID=$(redis-cli -h 127.0.0.1 info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
    also=()
    if [ -n "$REDIS_PID" ] && grep -q redis "/proc/$REDIS_PID/comm" 2>/dev/null; then
        also=(--also-pid "$REDIS_PID")
    else
        say "note: the Redis server is not a local process here; its own CPU is not measured"
    fi
    say "starting gpt-api-proxy with Redis (prefix $REDIS_PREFIX) on core $SERVICE_CORE"
    launch GW_PID "$TMP/gateway-redis.log" "${gap_env[@]}" "${redis_env[@]}" taskset -c "$SERVICE_CORE" "$GAP"
    GW_ADDR=$(wait_addr "$TMP/gateway-redis.log" "gpt-api-proxy listening on" "$GW_PID" 60)
    GW_URL="http://$GW_ADDR/v1/chat/completions"
    sleep 0.5
    if grep -q "Redis is not reachable" "$TMP/gateway-redis.log"; then
        say "note: the gateway did not reach Redis (limits would fail open): skipping the limits-on (Redis) rows"
    else
        say "[limits] key with limits, counters in Redis, open loop 5000 req/s for ${DURATION}s"
        before=$(redis_cmds)
        limits_rate limits_redis "$LKEY" "${also[@]}"
        # the sanity request, the warm-up second and the measured ones
        redis_note limits "$before" "$(awk -v d="$DURATION" 'BEGIN { printf "%d", 1 + 5000 * (d + 1) }')"
    fi
    stop "$GW_PID"
    redis_clear
else
    say "note: redis-cli -h 127.0.0.1 ping failed: skipping the limits-on (Redis) rows"
fi

# ---------------------------------------------------------------- minimal proxy
# The floor: `gap-bench proxy`, plain hyper server + pooled hyper client with
# the bodies buffered and nothing else, measured exactly like the gateway (alone
# on the service core with one Tokio worker, the mock staying on the load
# core). Gateway minus proxy is the cost of the gateway's own work.
px_cmd=(env TOKIO_WORKER_THREADS=1 taskset -c "$SERVICE_CORE")
say "starting the minimal proxy (gap-bench proxy) on core $SERVICE_CORE"
launch PX_PID "$TMP/proxy.log" "${px_cmd[@]}" "$LOAD" proxy --listen 127.0.0.1:0 --upstream "http://$MOCK_ADDR"
PX_ADDR=$(wait_addr "$TMP/proxy.log" "gap-bench proxy listening on" "$PX_PID" 30)
sleep 0.5
PX_IDLE_KB=$(status_kb "$PX_PID" VmRSS)
PX_URL="http://$PX_ADDR/v1/chat/completions"
curl -fsS --noproxy '*' -o /dev/null -H "Authorization: Bearer sk-bench" -H 'Content-Type: application/json' \
    --data-binary @"$TMP/chat.json" "$PX_URL" || die "a request through the minimal proxy failed"
run_requests proxy
printf '{"idle_rss_kb":%s,"peak_rss_kb":%s}\n' "$PX_IDLE_KB" "$(status_kb "$PX_PID" VmHWM)" >"$RES/mem.proxy.json"
stop "$PX_PID"

# ---------------------------------------------------------------- callgrind
# Instructions per request: the service runs under callgrind; after a warm-up
# the counters are zeroed, a batch of CG_SMALL requests runs and is dumped,
# the counters are zeroed again, CG_BIG requests run and are dumped. Fixed
# costs of a batch (new connections, the client's start) are in both dumps,
# so (Ir_big - Ir_small) / (CG_BIG - CG_SMALL) is the cost of one request.
CG_DIR=$OUT_DIR/callgrind
total_ir() { # the "totals:" (or "summary:") line of a callgrind dump
    awk '/^totals:/ { print $2; found = 1; exit } /^summary:/ { s = $2 } END { if (!found && s != "") print s }' "$1"
}
callgrind_side() { # SIDE METRIC BODY [KEY [VAR=VALUE...]]: the gateway's key and extra environment
    local side=$1 metric=$2 body=$3 gw_key=${4:-$KEY} pid addr url key log out small big
    local extra=("${@:5}")
    out=$CG_DIR/$metric.$side
    rm -f "$out" "$out".*
    log=$TMP/cg.$metric.$side.log
    if [ "$side" = gateway ]; then
        launch pid "$log" "${gap_env[@]}" "${extra[@]}" taskset -c "$SERVICE_CORE" \
            valgrind --tool=callgrind --callgrind-out-file="$out" "$GAP"
        addr=$(wait_addr "$log" "gpt-api-proxy listening on" "$pid" 600)
        key=$gw_key
    elif [ "$side" = proxy ]; then
        # relays to the uninstrumented mock on the load core, like the gateway
        launch pid "$log" "${px_cmd[@]}" \
            valgrind --tool=callgrind --callgrind-out-file="$out" "$LOAD" proxy \
            --listen 127.0.0.1:0 --upstream "http://$MOCK_ADDR"
        addr=$(wait_addr "$log" "gap-bench proxy listening on" "$pid" 600)
        key=sk-bench
    else
        launch pid "$log" env TOKIO_WORKER_THREADS=1 taskset -c "$SERVICE_CORE" \
            valgrind --tool=callgrind --callgrind-out-file="$out" "$MOCK" --listen 127.0.0.1:0
        addr=$(wait_addr "$log" "mock-upstream listening on" "$pid" 600)
        key=sk-bench
    fi
    url="http://$addr/v1/chat/completions"
    batch() {
        taskset -c "$LOAD_CORE" "$LOAD" closed --url "$url" --key "$key" --body-file "$body" \
            --concurrency 4 --requests "$1" --warmup 0 >"$TMP/cg.batch.json"
        grep -q '"errors":0' "$TMP/cg.batch.json" || { cat "$TMP/cg.batch.json" >&2; die "callgrind batch had errors"; }
    }
    batch 100
    callgrind_control --zero "$pid" >/dev/null 2>&1
    batch "$CG_SMALL"
    callgrind_control --dump=small "$pid" >/dev/null 2>&1
    callgrind_control --zero "$pid" >/dev/null 2>&1
    batch "$CG_BIG"
    callgrind_control --dump=big "$pid" >/dev/null 2>&1
    stop "$pid"
    small=$(total_ir "$out.1")
    big=$(total_ir "$out.2")
    [ -n "$small" ] && [ -n "$big" ] || die "could not read callgrind totals from $out.1 / $out.2"
    printf '{"ir_small":%s,"ir_big":%s,"n_small":%s,"n_big":%s,"ir_per_request":%s}\n' \
        "$small" "$big" "$CG_SMALL" "$CG_BIG" "$(((big - small) / (CG_BIG - CG_SMALL)))" >"$RES/$metric.$side.json"
    callgrind_annotate --inclusive=yes "$out.2" >"$CG_DIR/$metric.$side.inclusive.txt" 2>/dev/null || true
    callgrind_annotate --threshold=100 "$out.2" >"$CG_DIR/$metric.$side.self.txt" 2>/dev/null || true
}

if [ "$CALLGRIND" != 1 ]; then
    say "callgrind section skipped (BENCH_CALLGRIND=$CALLGRIND)"
elif ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    say "valgrind not installed: skipping instructions per request (apt-get install -y valgrind)"
else
    mkdir -p "$CG_DIR"
    # the gateway's upstream (the uninstrumented mock) stays on the load core
    say "[callgrind] gateway, non-streaming ($CG_SMALL then $CG_BIG requests, c=4)"
    callgrind_side gateway callgrind "$TMP/chat.json"
    say "[callgrind] minimal proxy, non-streaming"
    callgrind_side proxy callgrind "$TMP/chat.json"
    say "[callgrind] mock directly, non-streaming"
    callgrind_side direct callgrind "$TMP/chat.json"
    say "[callgrind] gateway, limits on (memory)"
    callgrind_side gateway callgrind_limits_mem "$TMP/chat.json" "$LKEY"
    if redis_up; then
        REDIS_USED=1
        redis_clear
        # under valgrind the first connection to Redis may take longer than
        # the gateway waits at start; the 100 warm-up requests cover it
        say "[callgrind] gateway, limits on (Redis)"
        before=$(redis_cmds)
        callgrind_side gateway callgrind_limits_redis "$TMP/chat.json" "$LKEY" "${redis_env[@]}"
        redis_note callgrind "$before" $((100 + CG_SMALL + CG_BIG))
        redis_clear
    else
        say "note: redis-cli -h 127.0.0.1 ping failed: skipping callgrind with limits on (Redis)"
    fi
    say "[callgrind] gateway, streams of 8 chunks"
    callgrind_side gateway callgrind_stream "$TMP/stream.json"
    say "[callgrind] mock directly, streams of 8 chunks"
    callgrind_side direct callgrind_stream "$TMP/stream.json"
    say "callgrind dumps and annotations in $CG_DIR"
fi

# ---------------------------------------------------------------- report
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MACHINE="$(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores (${CPU_MODEL:-unknown CPU}); Linux $(uname -r); git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'); load average $LOADAVG_START at the start, $(loadavg) at the end"
"$LOAD" report --dir "$RES" --out "$OUT_DIR/latest.json" --machine "$MACHINE"
cp -r "$RES" "$OUT_DIR/results-latest.tmp" && rm -rf "$OUT_DIR/results-latest" && mv "$OUT_DIR/results-latest.tmp" "$OUT_DIR/results-latest"

#!/usr/bin/env bash
# Soak run: minutes of mixed, hostile load on a release freeway, ending with
# a verdict (exit status 0 only if every check passed).
#
#   benches/soak.sh                        # 5 minutes
#   DURATION=60 benches/soak.sh            # a quick look
#
# It builds freeway, the mock upstream (examples/mock_upstream.rs) and the
# load driver (examples/soak_client.rs), starts the mock and freeway
# (RUST_LOG=info, the mock as the only provider with two keys and a
# configured secret header, tight bounds so that they are met), then for
# DURATION seconds:
#   - the driver sends ~290 requests/s of mixed kinds: chat and streams with
#     a fresh model name (`mock/<random>`, up to 256 bytes) and a fresh
#     X-Session-ID each, `free` with sessions (sticky pins), names and
#     session ids over 256 bytes (must be 400), upstreams that answer 429,
#     hang, answer 5xx, answer 200 with an error, answer 400, stream slowly,
#     break a stream, or stream without end; stalled readers (HTTP/1.1 with
#     a tiny receive buffer, HTTP/2 with a closed window, more streams than
#     a connection may open); slow uploads of large bodies (in-flight bytes)
#     and a wave of requests every 20 s (max_in_flight). The mock echoes
#     the keys and the secret header into its error bodies and stream
#     error events, so a leak shows. See examples/soak_client.rs.
#   - a policy file beside a copy of the built-in policies is rewritten
#     every 10 s, every third time with a syntax error; each edit is checked
#     (/health reports the broken one; a good one's tag shows in /metrics).
#   - freeway's RSS (VmRSS) and open fds are sampled every second.
# At the end it checks /metrics, /health and freeway's log for the secrets
# (any 12-byte piece of one), the log for panics, and prints the verdict:
# requests by kind and status, 5xx not caused by the upstream (must be 0),
# RSS at start / peak / end against RSS_BOUND_MB, fds, secrets found (must
# be none), streams cut by the watchdog (freeway_streams_cut_total: at
# least one per stalled reader and per endless stream), policy edits.
#
# Environment:
#   DURATION       seconds of load (default 300)
#   RSS_BOUND_MB   the peak RSS allowed, in MB (default 300; see README)
#   SCALE          multiplies every request rate (default 1)
#   FRESH_INSTANCES=1  plugins.fresh_instances: true (no pooled plugin
#                  instances: shows what RSS is without the pool)
#   ONLY           only these request kinds, comma-separated (to look at one
#                  alone; names in examples/soak_client.rs, Kind::key)
#   KEEP_WORK=1    keep the temp dir (config, logs, samples, metrics)
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-300}
RSS_BOUND_MB=${RSS_BOUND_MB:-300}
SCALE=${SCALE:-1}
# freeway's stream timers in this run (also given to the driver).
IDLE_SECS=4
MAX_STREAM_SECS=20

need python3 curl

build() {
    log "building freeway, the mock upstream and the soak driver (release)"
    cargo build --release --bin freeway --example mock_upstream --example soak_client
}

random_token() {
    python3 -c 'import secrets, string, sys; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(int(sys.argv[1]))))' "$1"
}

write_config() {
    cat >"$WORK_DIR/freeway.yaml" <<EOF
# The soak's freeway: tight bounds, so that the run meets them.
server:
  listen: 127.0.0.1:$FREEWAY_PORT
  max_body_bytes: 1048576            # big-body uploads are 256-900 KB
  max_in_flight: 256                 # the 20 s waves send 150 at once, over the ~100 stalled and held
  max_in_flight_bytes: 3145728       # ~3 MB: a few slow big uploads at once
  max_streams_per_connection: 32     # the HTTP/2 stalled readers open 40-48 streams
  body_read_timeout: 10s
providers:
  mock:
    plugin: openai-compat
    base_url: http://127.0.0.1:$MOCK_PORT/v1
    keys: ["\${SOAK_KEY_1}", "\${SOAK_KEY_2}"]
    # Configured header values are secrets too; x-mock-models makes the
    # mock's model listing fail with the secrets in its error (discovery).
    headers: { X-Soak-Secret: "\${SOAK_HEADER_SECRET}", X-Mock-Models: fail }
    free: true
    models: [mock-model, mock-model-b]
dispatch:
  max_attempts: 4
  cooldown: 2s
  timeout: 2s                        # the hanging upstream fails in 2 s
  first_byte_timeout: 2s
  stream_idle_timeout: ${IDLE_SECS}s
  stream_max_duration: ${MAX_STREAM_SECS}s
discovery:
  enabled: true
  interval: 1m
policies:
  dir: $WORK_DIR/policies
plugins:
  fresh_instances: $([[ "${FRESH_INSTANCES:-0}" == 1 ]] && echo true || echo false)
EOF
}

# The extra policy, revision N; broken (a syntax error) when $2 is "broken".
write_policy() {
    local rev=$1 state=$2 file="$WORK_DIR/policies/15-soak.rhai"
    if [[ "$state" == broken ]]; then
        printf '// soak revision %s: broken on purpose\nfn request(req, settings) {\n    req.tag("soak_rev", "%s"\n' \
            "$rev" "$rev" >"$file"
    else
        printf '// soak revision %s: tags `free` requests, so /metrics shows the revision in force\nfn request(req, settings) {\n    if req.model == "free" { req.tag("soak_rev", "%s"); }\n}\n' \
            "$rev" "$rev" >"$file"
    fi
}

# Every 10 s: a new revision of the extra policy, every third one broken;
# 3 s later, checks that freeway reported the broken one (/health
# policies.ok false) or runs the good one (its tag in /metrics).
edit_policies() {
    local rev=0 state ok seen end=$((SECONDS + DURATION - 3))
    # Without `free` requests nothing runs the extra policy's tag.
    local tags=yes
    [[ -n "${ONLY:-}" && ",$ONLY," != *,free,* ]] && tags=no
    while sleep 10 && ((SECONDS < end)); do
        rev=$((rev + 1))
        state=good
        ((rev % 3 == 0)) && state=broken
        write_policy "$rev" "$state"
        sleep 3
        ok=$(curl -s --max-time 5 "http://127.0.0.1:$FREEWAY_PORT/health" |
            python3 -c 'import json, sys; print(str(json.load(sys.stdin)["policies"]["ok"]).lower())' 2>/dev/null || echo unknown)
        seen=no
        [[ $tags == no ]] && seen=unchecked
        if [[ $tags == yes ]] && curl -s --max-time 5 "http://127.0.0.1:$FREEWAY_PORT/metrics" | grep -q "tag=\"soak_rev\",value=\"$rev\""; then
            seen=yes
        fi
        echo "$rev $state $ok $seen" >>"$WORK_DIR/policy-edits.txt"
    done
}

# Every second: seconds since the start, freeway's VmRSS (kB), its open fds.
sample() {
    local pid=$1 start=$SECONDS rss fds
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || break
        fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        echo "$((SECONDS - start)) $rss $fds" >>"$WORK_DIR/samples.txt"
        sleep 1
    done
}

one_sample() {
    local pid=$1
    echo "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status") $(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)"
}

# Prints "file<TAB>hits" for each file: how many times any 12-byte piece of
# a secret occurs in it (a secret cut in half still shows).
scan_for_secrets() {
    python3 - "$@" <<'PY'
import sys
args = sys.argv[1:]
cut = args.index("--")
secrets, files = args[:cut], args[cut + 1:]
pieces = {s[i:i + 12].encode() for s in secrets for i in range(len(s) - 11)}
for path in files:
    try:
        data = open(path, "rb").read()
    except OSError:
        data = b""
    print(f"{path}\t{sum(data.count(p) for p in pieces)}")
PY
}

main() {
    build
    local secret1 secret2 secret3
    secret1="sk-soak-$(random_token 40)"
    secret2="sk-soak-$(random_token 40)"
    secret3="hdr-soak-$(random_token 32)"

    start_mock
    mkdir -p "$WORK_DIR/policies"
    cp policies/*.rhai "$WORK_DIR/policies/"
    write_policy 0 good
    FREEWAY_PORT=$(free_port)
    write_config
    start_freeway "$BIN_DIR/freeway" "$WORK_DIR/freeway.yaml" "$FREEWAY_PORT" info freeway \
        SOAK_KEY_1="$secret1" SOAK_KEY_2="$secret2" SOAK_HEADER_SECRET="$secret3"
    local pid=$STARTED_PID
    sleep 2
    local start_rss start_fds
    read -r start_rss start_fds < <(one_sample "$pid")
    log "freeway at rest: RSS $((start_rss / 1024)) MB, $start_fds fds"

    sample "$pid" &
    track $!
    edit_policies &
    local editor=$!
    track "$editor"

    log "soak: ${DURATION}s of mixed load (progress every 30 s)"
    local client_status=0
    "$BIN_DIR/examples/soak_client" --addr "127.0.0.1:$FREEWAY_PORT" --duration "$DURATION" \
        --secret "$secret1" --secret "$secret2" --secret "$secret3" \
        --idle "$IDLE_SECS" --max-duration "$MAX_STREAM_SECS" --scale "$SCALE" ${ONLY:+--only "$ONLY"} \
        --summary "$WORK_DIR/client-summary.txt" >"$WORK_DIR/client.out" 2>"$WORK_DIR/client.err" ||
        client_status=$?
    kill "$editor" 2>/dev/null || true
    [[ -s "$WORK_DIR/client.out" ]] || die "the soak driver failed: $(tail -n 20 "$WORK_DIR/client.err")"

    # Let what the load left behind go (keep-alive connections, pins in
    # their TTL do not), then take the last sample.
    sleep 5
    local alive=yes end_rss=0 end_fds=0
    if kill -0 "$pid" 2>/dev/null; then
        read -r end_rss end_fds < <(one_sample "$pid")
    else
        alive=no
    fi
    curl -s --max-time 10 "http://127.0.0.1:$FREEWAY_PORT/metrics" >"$WORK_DIR/metrics.txt" || true
    curl -s --max-time 10 "http://127.0.0.1:$FREEWAY_PORT/health" >"$WORK_DIR/health.json" || true
    curl -s --max-time 10 "http://127.0.0.1:$FREEWAY_PORT/v1/models" >"$WORK_DIR/models.json" || true

    verdict "$client_status" "$alive" "$start_rss" "$start_fds" "$end_rss" "$end_fds" \
        "$secret1" "$secret2" "$secret3"
}

# check DESCRIPTION OK(1|0): one line of the verdict.
FAILURES=0
check() {
    if [[ "$2" == 1 ]]; then
        printf '%-72s PASS\n' "$1"
    else
        printf '%-72s FAIL\n' "$1"
        FAILURES=$((FAILURES + 1))
    fi
}

verdict() {
    local client_status=$1 alive=$2 start_rss=$3 start_fds=$4 end_rss=$5 end_fds=$6
    shift 6
    local -a secrets=("$@")
    FAILURES=0
    declare -A s=()
    local k v
    while IFS='=' read -r k v; do s[$k]=$v; done <"$WORK_DIR/client-summary.txt"

    local peak_rss peak_fds samples
    read -r peak_rss peak_fds samples < <(awk '$2 > r { r = $2 } $3 > f { f = $3 } END { print r + 0, f + 0, NR }' "$WORK_DIR/samples.txt")
    local cut_stalled cut_long
    cut_stalled=$(awk '/^freeway_streams_cut_total\{reason="client_stalled"\}/ { print $2 }' "$WORK_DIR/metrics.txt")
    cut_long=$(awk '/^freeway_streams_cut_total\{reason="max_duration"\}/ { print $2 }' "$WORK_DIR/metrics.txt")
    cut_stalled=${cut_stalled:-0}
    cut_long=${cut_long:-0}
    local panics
    panics=$(grep -c -i 'panicked' "$WORK_DIR/freeway.err" || true)

    local -A hits=()
    local file n
    while IFS=$'\t' read -r file n; do hits[$(basename "$file")]=$n; done < <(
        scan_for_secrets "${secrets[@]}" -- "$WORK_DIR/metrics.txt" "$WORK_DIR/health.json" "$WORK_DIR/models.json" \
            "$WORK_DIR/freeway.err" "$WORK_DIR/freeway.out")

    local edits good_ok broken_seen good broken
    read -r edits good good_ok broken broken_seen < <(awk '
        { n++ } $2 == "good" { g++; if ($3 == "true" && $4 != "no") gok++ }
        $2 == "broken" { b++; if ($3 == "false") bs++ }
        END { print n + 0, g + 0, gok + 0, b + 0, bs + 0 }' "$WORK_DIR/policy-edits.txt" 2>/dev/null || echo 0 0 0 0 0)

    echo
    echo "=== soak verdict: ${DURATION}s, $(machine_line) ==="
    echo
    cat "$WORK_DIR/client.out"
    echo
    check "driver: every answer as expected, no secret (exit $client_status)" \
        "$((client_status == 0 && ${s[pass]:-0} == 1))"
    check "5xx not caused by the upstream: ${s[unexplained_5xx]:-?} (must be 0)" \
        "$((${s[unexplained_5xx]:-1} == 0))"
    echo "  (502 caused by the upstream: ${s[upstream_5xx]:-?}; 503 from freeway's bounds: ${s[bound_503]:-?})"
    check "RSS start $((start_rss / 1024)) MB, peak $((peak_rss / 1024)) MB, end $((end_rss / 1024)) MB (bound ${RSS_BOUND_MB} MB)" \
        "$((peak_rss > 0 && peak_rss / 1024 < RSS_BOUND_MB))"
    echo "  RSS every 30 s (MB): $(awk 'NR % 30 == 1 { printf "%s%d", sep, $2 / 1024; sep = " " }' "$WORK_DIR/samples.txt")"
    echo "  open fds: start $start_fds, peak $peak_fds, end $end_fds ($samples samples)"
    check "secrets in /metrics ${hits[metrics.txt]:-?}, /health ${hits[health.json]:-?}, /v1/models ${hits[models.json]:-?}, log ${hits[freeway.err]:-?}" \
        "$((${hits[metrics.txt]:-1} + ${hits[health.json]:-1} + ${hits[models.json]:-1} + ${hits[freeway.err]:-1} + ${hits[freeway.out]:-1} == 0))"
    echo "  (in answers to clients: ${s[leaks]:-?}; log: $(wc -l <"$WORK_DIR/freeway.err") lines, $(($(wc -c <"$WORK_DIR/freeway.err") / 1024)) KB)"
    check "watchdog cuts: client_stalled $cut_stalled (stalled readers ${s[stalled_streams]:-?})" \
        "$((${cut_stalled%.*} >= ${s[stalled_streams]:-1}))"
    check "watchdog cuts: max_duration $cut_long (endless streams read ${s[endless_streams]:-?})" \
        "$((${cut_long%.*} >= ${s[endless_streams]:-1}))"
    check "policy edits $edits: good ones in force $good_ok/$good, broken ones reported $broken_seen/$broken" \
        "$((edits > 0 && good_ok == good && broken_seen == broken))"
    check "freeway alive at the end: $alive; panics in the log: $panics" \
        "$([[ $alive == yes && $panics == 0 ]] && echo 1 || echo 0)"
    echo "  /metrics at the end: $(wc -c <"$WORK_DIR/metrics.txt") bytes, $(grep -vc '^#' "$WORK_DIR/metrics.txt") series lines"
    echo "  distinct model names ${s[names]:-?}, session ids ${s[sessions]:-?} (the issue asks for 50k of each in 5 minutes)"
    echo
    if ((FAILURES == 0)); then
        echo "RESULT: PASS"
    else
        echo "RESULT: FAIL ($FAILURES checks failed; KEEP_WORK=1 keeps $WORK_DIR)"
        return 1
    fi
}

main "$@"

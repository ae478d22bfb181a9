#!/usr/bin/env bash
# Load benchmark: how much does freeway add on top of its upstream?
#
#   benches/load.sh                                   # 10 s per run, concurrency 1 16 64
#   DURATION=3 CONCURRENCY="1 16" benches/load.sh     # quicker
#   FREEWAY_BEFORE=/path/to/an/older/freeway benches/load.sh --compare
#
# Default mode: it builds freeway and the mock upstream
# (examples/mock_upstream.rs), starts both on free loopback ports, and runs
# the HTTP load generator `oha` with the same ~1 KB chat request (non-stream
# and stream) twice: straight to the mock ("direct") and through freeway.
# The difference between the two is the cost of the gateway: throughput
# ratio, added p50/p99 latency, and freeway's CPU time per request (from
# /proc, so Linux only).
#
# --compare: three servers side by side in front of the same mock, and the
# mock alone, in interleaved rounds (round 1: direct, nginx, before, after
# for non-stream, then for stream; round 2 the same...), so that a drift of
# the machine during the run (other users, thermal) hits all alike:
#   - direct: wrk straight to the mock, the baseline of the latency each
#     server adds (its row's CPU is the mock's own);
#   - nginx: a plain keep-alive reverse proxy (Debian's nginx, run in the
#     foreground from a temp config on a loopback port; installed with
#     apt-get when missing, as wrk is), 2 worker processes like freeway's 2
#     worker threads;
#   - before: the freeway binary named by FREEWAY_BEFORE;
#   - after: this tree's freeway (built here; FREEWAY_AFTER overrides it).
# Both freeways run their built-in policies (the default) and get a
# `mock/mock-model` request (`MODEL` below). Each run reports req/s and the CPU time per
# request of the server's whole process tree (utime + stime of the process
# and its descendants, from /proc/PID/stat), then a summary with the median
# of the rounds, each server's CPU as a multiple of nginx's, and the p50
# latency each adds over the direct run of its round. The load generator is wrk (Debian's package), not oha: it
# installs in seconds where oha compiles for minutes, and being C with one
# event-loop thread it takes less of the shared cores away from the servers
# it measures; CPU per request is read from /proc either way.
#
# Everything runs on this machine, so the load generator, the servers and
# the mock compete for the same cores: absolute numbers depend on the
# machine and whatever else runs on it; the comparisons are what matter.
#
# Environment:
#   DURATION        seconds per run (default 10)
#   CONCURRENCY     space-separated connection counts (default "1 16 64";
#                   --compare: "16")
#   ROUNDS          --compare: rounds (default 3)
#   MODEL           the model the requests name (default `mock/mock-model`,
#                   which no built-in policy acts on; `mock-model`, a bare
#                   id, goes through the sticky-session policy)
#   FREEWAY_BEFORE  --compare: the freeway binary to compare against (required)
#   FREEWAY_AFTER   --compare: the freeway binary to compare (default: built
#                   here; given, nothing is built once the mock is)
#   BEFORE_STATE, AFTER_STATE  --compare: the `state:` line of each freeway's
#                   config (default: a database in the work folder). The cost
#                   of persistence, in one run:
#                     FREEWAY_BEFORE=target/release/freeway \
#                     BEFORE_STATE='state: { path: "" }' benches/load.sh --compare
#   BEFORE_SERVER, AFTER_SERVER  --compare: more `server:` settings of each
#                   freeway, after its listen address. Busy polling against
#                   the same binary without it, at concurrency 1:
#                     FREEWAY_BEFORE=target/release/freeway AFTER_SERVER='busy_poll: 200us' \
#                     CONCURRENCY=1 benches/load.sh --compare
#   KEEP_WORK=1     keep the temp dir (configs, logs, raw reports)
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COMPARE=0
if [[ "${1:-}" == --compare ]]; then
    COMPARE=1
elif [[ -n "${1:-}" ]]; then
    die "unknown argument '$1' (see the header of $0)"
fi

DURATION=${DURATION:-10}
if ((COMPARE)); then
    CONCURRENCY=${CONCURRENCY:-16}
else
    CONCURRENCY=${CONCURRENCY:-"1 16 64"}
fi
ROUNDS=${ROUNDS:-3}
CLK_TCK=$(getconf CLK_TCK)

# --- tools -------------------------------------------------------------------

build() {
    log "building freeway and the mock upstream (release)"
    cargo build --release --bin freeway --example mock_upstream
}

# oha is a Rust HTTP load generator; cargo is here anyway, so install it from
# crates.io when missing.
ensure_oha() {
    if ! command -v oha >/dev/null 2>&1; then
        log "oha not found: installing it with 'cargo install oha --locked' (this takes a few minutes, once)"
        cargo install oha --locked
        export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        command -v oha >/dev/null 2>&1 || die "oha was installed but is not on PATH"
    fi
    need python3

    # Flags changed across oha versions: JSON output is `--output-format json`
    # in recent ones and `-j/--json` in older ones; `-w` (wait for in-flight
    # requests at the deadline instead of aborting them) is also recent.
    local help
    help=$(oha --help 2>&1)
    if grep -q -- '--output-format' <<<"$help"; then
        OHA_JSON=(--output-format json)
    elif grep -q -- '--json' <<<"$help"; then
        OHA_JSON=(--json)
    else
        die "this oha has no JSON output; upgrade it: cargo install oha --locked --force"
    fi
    OHA_WAIT=()
    if grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$help"; then
        OHA_WAIT=(-w)
    fi
    grep -q -- '--no-tui' <<<"$help" || die "this oha has no --no-tui; upgrade it: cargo install oha --locked --force"
    OHA_VERSION=$(oha --version 2>&1 | head -n1)
}

# --- default mode: direct vs freeway, with oha ----------------------------------

# run_oha URL BODY_FILE CONCURRENCY OUT_JSON
run_oha() {
    oha --no-tui "${OHA_WAIT[@]}" -z "${DURATION}s" -c "$3" -m POST \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer bench-key' \
        -D "$2" "${OHA_JSON[@]}" "$1" >"$4"
}

# Prints "rps p50_ms p99_ms ok errors" from an oha JSON report. Only 2xx
# answers count as completed; non-2xx answers and connection errors are
# errors. Requests oha cut at the deadline (older oha without -w) are not
# errors: they are just not counted.
summarize() {
    python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution") or {}
errs = d.get("errorDistribution") or {}
ok = sum(n for c, n in codes.items() if str(c).startswith("2"))
bad = sum(n for c, n in codes.items() if not str(c).startswith("2"))
bad += sum(n for e, n in errs.items() if "deadline" not in e)
total = d["summary"]["total"] or 1
p = d.get("latencyPercentiles") or {}
ms = lambda v: (v or 0.0) * 1000.0
print(f"{ok / total:.1f} {ms(p.get('p50')):.4f} {ms(p.get('p99')):.4f} {ok} {bad}")
PY
}

# Describes the errors of one oha report (status codes and error messages).
describe_errors() {
    python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = {c: n for c, n in (d.get("statusCodeDistribution") or {}).items() if not str(c).startswith("2")}
errs = {e: n for e, n in (d.get("errorDistribution") or {}).items() if "deadline" not in e}
print(f"status codes {codes}, errors {errs}")
PY
}

ROWS=()
FAILURES=()

# measure MODE BODY_FILE CONCURRENCY
measure() {
    local mode=$1 body=$2 conc=$3
    local direct_json="$WORK_DIR/direct-$mode-$conc.json" freeway_json="$WORK_DIR/freeway-$mode-$conc.json"
    local d_rps d_p50 d_p99 d_err f_rps f_p50 f_p99 f_ok f_err t0 t1

    log "$mode, concurrency $conc: direct (${DURATION}s)"
    run_oha "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" "$body" "$conc" "$direct_json"
    read -r d_rps d_p50 d_p99 _ d_err < <(summarize "$direct_json")

    log "$mode, concurrency $conc: through freeway (${DURATION}s)"
    t0=$(proc_cpu_ticks "$FREEWAY_PID")
    run_oha "http://127.0.0.1:$FREEWAY_PORT/v1/chat/completions" "$body" "$conc" "$freeway_json"
    t1=$(proc_cpu_ticks "$FREEWAY_PID")
    read -r f_rps f_p50 f_p99 f_ok f_err < <(summarize "$freeway_json")

    ((d_err == 0)) || FAILURES+=("direct $mode c=$conc: $d_err errors: $(describe_errors "$direct_json")")
    ((f_err == 0)) || FAILURES+=("freeway $mode c=$conc: $f_err errors: $(describe_errors "$freeway_json")")

    # CPU µs per request = ticks / CLK_TCK seconds, spread over the 2xx answers.
    ROWS+=("$(python3 - "$mode" "$conc" "$d_rps" "$f_rps" "$d_p50" "$d_p99" "$f_p50" "$f_p99" \
        "$((t1 - t0))" "$CLK_TCK" "$f_ok" "$d_err" "$f_err" <<'PY'
import sys
mode, conc = sys.argv[1], sys.argv[2]
d_rps, f_rps, d_p50, d_p99, f_p50, f_p99 = map(float, sys.argv[3:9])
ticks, clk, f_ok, d_err, f_err = map(int, sys.argv[9:14])
ratio = f_rps / d_rps if d_rps else 0.0
cpu_us = ticks / clk * 1e6 / f_ok if f_ok else float("nan")
added_p50 = (f_p50 - d_p50) * 1000.0
added_p99 = (f_p99 - d_p99) * 1000.0
errs = "" if d_err == 0 and f_err == 0 else f"  ERRORS d={d_err} f={f_err}"
print(f"{mode:<10} {conc:>4} {d_rps:>11.0f} {f_rps:>11.0f} {ratio:>6.2f} "
      f"{d_p50:>9.3f} {d_p99:>9.3f} {f_p50:>9.3f} {f_p99:>9.3f} "
      f"{added_p50:>9.0f} {added_p99:>9.0f} {cpu_us:>9.1f}{errs}")
PY
    )")
}

print_table() {
    echo
    echo "$(machine_line); $OHA_VERSION; ${DURATION}s per run"
    echo "(oha, freeway and the mock share these CPUs; direct = oha -> mock, freeway = oha -> freeway -> mock)"
    echo
    printf '%-10s %4s %11s %11s %6s %9s %9s %9s %9s %9s %9s %9s\n' \
        mode conc "direct r/s" "freeway r/s" ratio "d p50 ms" "d p99 ms" "f p50 ms" "f p99 ms" \
        "+p50 us" "+p99 us" "cpu us/r"
    local row
    for row in "${ROWS[@]}"; do
        echo "$row"
    done
    echo
    if [[ -s "$WORK_DIR/freeway.err" ]]; then
        echo "freeway wrote to stderr (RUST_LOG=warn), last lines:"
        tail -n 10 "$WORK_DIR/freeway.err" | sed 's/^/  /'
    fi
    if ((${#FAILURES[@]} == 0)); then
        echo "errors: none (every answer was 2xx, no connection errors)"
    else
        echo "errors: SOME RUNS HAD ERRORS"
        printf '  %s\n' "${FAILURES[@]}"
    fi
}

main_default() {
    build
    ensure_oha

    make_body false "${MODEL:-mock/mock-model}" >"$WORK_DIR/body-non-stream.json"
    make_body true "${MODEL:-mock/mock-model}" >"$WORK_DIR/body-stream.json"
    log "request bodies: $(wc -c <"$WORK_DIR/body-non-stream.json") bytes (non-stream), $(wc -c <"$WORK_DIR/body-stream.json") bytes (stream)"

    start_mock
    FREEWAY_PORT=$(free_port)
    write_freeway_config "$FREEWAY_PORT" "$WORK_DIR/freeway.yaml"
    # RUST_LOG=warn: per-request logging would be measured too.
    start_freeway "$BIN_DIR/freeway" "$WORK_DIR/freeway.yaml" "$FREEWAY_PORT" warn freeway
    FREEWAY_PID=$STARTED_PID
    local url="http://127.0.0.1:$FREEWAY_PORT/v1/chat/completions"
    smoke_test non-stream "$url" "$WORK_DIR/body-non-stream.json" "$WORK_DIR/freeway.err"
    smoke_test stream "$url" "$WORK_DIR/body-stream.json" "$WORK_DIR/freeway.err"

    local mode conc
    for mode in non-stream stream; do
        for conc in $CONCURRENCY; do
            measure "$mode" "$WORK_DIR/body-$mode.json" "$conc"
        done
    done

    print_table
    ((${#FAILURES[@]} == 0))
}

# --- --compare: nginx, freeway before, freeway after, with wrk --------------------

# compare_run SERVER MODE CONC ROUND: one wrk run against one server.
# Appends "server mode conc round rps cpu_us p50_ms p99_ms errors" to RESULTS.
compare_run() {
    local server=$1 mode=$2 conc=$3 round=$4 port pid
    case "$server" in
        direct) port=$MOCK_PORT pid=$MOCK_PID ;;
        nginx) port=$NGINX_PORT pid=$NGINX_PID ;;
        before) port=$BEFORE_PORT pid=$BEFORE_PID ;;
        after) port=$AFTER_PORT pid=$AFTER_PID ;;
    esac
    local out="$WORK_DIR/wrk-$server-$mode-$conc-$round.txt" t0 t1
    t0=$(tree_cpu_ticks "$pid")
    wrk -t1 -c"$conc" -d"${DURATION}s" -s "$WORK_DIR/wrk-$mode.lua" "http://127.0.0.1:$port/v1/chat/completions" >"$out" 2>&1 ||
        die "wrk failed against $server: $(cat "$out")"
    t1=$(tree_cpu_ticks "$pid")
    local line
    line=$(grep '^WRK ' "$out") || die "no figures from wrk against $server: $(cat "$out")"
    RESULTS+=("$(python3 - "$server" "$mode" "$conc" "$round" "$((t1 - t0))" "$CLK_TCK" $line <<'PY'
import sys
server, mode, conc, rnd, ticks, clk = sys.argv[1:7]
_, requests, duration_us, e_status, e_conn, e_read, e_write, e_timeout, p50, p99 = sys.argv[7:17]
requests, duration_us = int(requests), int(duration_us)
errors = sum(map(int, (e_status, e_conn, e_read, e_write, e_timeout)))
ok = requests - int(e_status)
rps = requests / (duration_us / 1e6)
cpu = int(ticks) / int(clk) * 1e6 / ok if ok else float("nan")
print(f"{server} {mode} {conc} {rnd} {rps:.0f} {cpu:.1f} {int(p50)/1000:.3f} {int(p99)/1000:.3f} {errors}")
PY
    )")
    log "  $server $mode c=$conc round $round: ${RESULTS[-1]#* * * * }"
}

print_compare() {
    echo
    echo "$(machine_line)"
    echo "$(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2), 1 thread; nginx $(nginx -v 2>&1 | sed 's/.*\///'); ${DURATION}s per run, $ROUNDS interleaved rounds"
    echo "before: $FREEWAY_BEFORE"
    echo "after:  $FREEWAY_AFTER"
    echo "(wrk, the server and the mock share these CPUs; cpu us/req = the server's process tree;"
    echo " direct = wrk straight to the mock, whose own CPU that row shows)"
    echo
    python3 - "${RESULTS[@]}" <<'PY'
import sys, statistics
rows = [r.split() for r in sys.argv[1:]]
print(f"{'server':<8} {'mode':<10} {'conc':>4} {'round':>5} {'req/s':>8} {'cpu us/req':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
for s, m, c, r, rps, cpu, p50, p99, err in rows:
    print(f"{s:<8} {m:<10} {c:>4} {r:>5} {rps:>8} {cpu:>10} {p50:>8} {p99:>8} {err:>6}")
print()
print("median of the rounds (min-max); x nginx = median cpu over nginx's:")
print(f"{'server':<8} {'mode':<10} {'conc':>4} {'req/s':>16} {'cpu us/req':>18} {'x nginx':>8}")
seen = []
for s, m, c, *_ in rows:
    if (m, c, s) not in seen:
        seen.append((m, c, s))
order = {"direct": 0, "nginx": 1, "before": 2, "after": 3}
def sel(m, c, s):
    return [r for r in rows if (r[1], r[2], r[0]) == (m, c, s)]
for m, c, s in sorted(seen, key=lambda k: (k[0], int(k[1]), order.get(k[2], 9))):
    rps = [float(r[4]) for r in sel(m, c, s)]
    cpu = [float(r[5]) for r in sel(m, c, s)]
    nginx = [float(r[5]) for r in sel(m, c, "nginx")]
    ratio = f"{statistics.median(cpu) / statistics.median(nginx):>7.2f}x" if nginx and s != "direct" else ""
    print(f"{s:<8} {m:<10} {c:>4} {statistics.median(rps):>8.0f} ({min(rps):.0f}-{max(rps):.0f})"
          f" {statistics.median(cpu):>7.1f} ({min(cpu):.1f}-{max(cpu):.1f}) {ratio:>8}")
print()
print("p50 latency added over direct, us (median of the rounds, each round's own direct run; min-max):")
for m, c, s in sorted(seen, key=lambda k: (k[0], int(k[1]), order.get(k[2], 9))):
    if s == "direct":
        continue
    direct = {r[3]: float(r[6]) for r in sel(m, c, "direct")}
    added = [(float(r[6]) - direct[r[3]]) * 1000 for r in sel(m, c, s) if r[3] in direct]
    if added:
        print(f"{s:<8} {m:<10} {c:>4} {statistics.median(added):>8.0f} ({min(added):.0f}-{max(added):.0f})")
PY
    local errors=0 row
    for row in "${RESULTS[@]}"; do
        [[ "${row##* }" == 0 ]] || errors=1
    done
    echo
    if ((errors)); then
        echo "errors: SOME RUNS HAD ERRORS (last column)"
        return 1
    fi
    echo "errors: none (every answer 2xx, no connection errors)"
}

main_compare() {
    [[ -n "${FREEWAY_BEFORE:-}" ]] || die "--compare needs FREEWAY_BEFORE=/path/to/the/older/freeway"
    [[ -x "$FREEWAY_BEFORE" ]] || die "FREEWAY_BEFORE=$FREEWAY_BEFORE is not an executable"
    ensure_debian wrk nginx
    need python3
    # Both freeways given and the mock built: nothing to build (a release
    # build links with LTO, minutes after any change to the tree).
    if [[ -n "${FREEWAY_AFTER:-}" && -x "$BIN_DIR/examples/mock_upstream" ]]; then
        [[ -x "$FREEWAY_AFTER" ]] || die "FREEWAY_AFTER=$FREEWAY_AFTER is not an executable"
        log "FREEWAY_AFTER given and the mock built: not building"
    else
        build
    fi
    FREEWAY_BEFORE=$(realpath "$FREEWAY_BEFORE")
    FREEWAY_AFTER=$(realpath "${FREEWAY_AFTER:-$BIN_DIR/freeway}")

    local mode
    for mode in non-stream stream; do
        make_body "$([[ $mode == stream ]] && echo true || echo false)" "${MODEL:-mock/mock-model}" >"$WORK_DIR/body-$mode.json"
        write_wrk_script "$WORK_DIR/body-$mode.json" "$WORK_DIR/wrk-$mode.lua"
    done

    start_mock
    start_nginx
    BEFORE_PORT=$(free_port)
    write_freeway_config "$BEFORE_PORT" "$WORK_DIR/before.yaml" "${BEFORE_STATE:-}" "${BEFORE_SERVER:-}"
    start_freeway "$FREEWAY_BEFORE" "$WORK_DIR/before.yaml" "$BEFORE_PORT" warn before
    BEFORE_PID=$STARTED_PID
    AFTER_PORT=$(free_port)
    write_freeway_config "$AFTER_PORT" "$WORK_DIR/after.yaml" "${AFTER_STATE:-}" "${AFTER_SERVER:-}"
    start_freeway "$FREEWAY_AFTER" "$WORK_DIR/after.yaml" "$AFTER_PORT" warn after
    AFTER_PID=$STARTED_PID

    local server port err
    for server in direct nginx before after; do
        case "$server" in
            direct) port=$MOCK_PORT err="$WORK_DIR/mock.err" ;;
            nginx) port=$NGINX_PORT err="$WORK_DIR/nginx/error.log" ;;
            before) port=$BEFORE_PORT err="$WORK_DIR/before.err" ;;
            after) port=$AFTER_PORT err="$WORK_DIR/after.err" ;;
        esac
        for mode in non-stream stream; do
            smoke_test "$mode" "http://127.0.0.1:$port/v1/chat/completions" "$WORK_DIR/body-$mode.json" "$err"
            # Warm up (plugin instances, connection pools), unmeasured.
            wrk -t1 -c16 -d2s -s "$WORK_DIR/wrk-$mode.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null 2>&1
        done
    done

    RESULTS=()
    local round conc
    for ((round = 1; round <= ROUNDS; round++)); do
        for mode in non-stream stream; do
            for conc in $CONCURRENCY; do
                for server in direct nginx before after; do
                    compare_run "$server" "$mode" "$conc" "$round"
                done
            done
        done
    done
    print_compare
}

if ((COMPARE)); then
    main_compare
else
    main_default
fi

#!/usr/bin/env bash
# Load benchmark: how much does freeway add on top of its upstream?
#
#   benches/load.sh                                   # 10 s per run, concurrency 1 16 64
#   DURATION=3 CONCURRENCY="1 16" benches/load.sh     # quicker
#
# It builds freeway and the mock upstream (examples/mock_upstream.rs), starts
# both on free loopback ports, and runs the HTTP load generator `oha` with the
# same ~1 KB chat request (non-stream and stream) twice: straight to the mock
# ("direct") and through freeway. The difference between the two is the cost
# of the gateway: throughput ratio, added p50/p99 latency, and freeway's CPU
# time per request (from /proc, so Linux only).
#
# Everything runs on this machine, so oha, freeway and the mock compete for
# the same cores: absolute numbers depend on the machine and whatever else
# runs on it; the comparison direct/freeway is what matters.
#
# Environment:
#   DURATION      seconds per oha run (default 10)
#   CONCURRENCY   space-separated connection counts (default "1 16 64")
set -euo pipefail

DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-"1 16 64"}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/freeway-load.XXXXXX")
MOCK_PID=""
FREEWAY_PID=""

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Stop both servers and remove the temp files, however the script ends.
cleanup() {
    local pid
    for pid in "$FREEWAY_PID" "$MOCK_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to read oha's JSON output"

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

# --- servers -----------------------------------------------------------------

# Waits until FILE has a line matching PATTERN (a server's start-up line).
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 i
    for ((i = 0; i < 200; i++)); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

start_mock() {
    target/release/examples/mock_upstream >"$WORK_DIR/mock.out" 2>"$WORK_DIR/mock.err" &
    MOCK_PID=$!
    wait_for_line "$WORK_DIR/mock.out" '^listening on ' "$MOCK_PID" ||
        die "the mock upstream did not start: $(cat "$WORK_DIR/mock.err")"
    MOCK_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK_DIR/mock.out")
    [[ -n "$MOCK_PORT" ]] || die "cannot read the mock's port from: $(cat "$WORK_DIR/mock.out")"
    log "mock upstream on 127.0.0.1:$MOCK_PORT (pid $MOCK_PID)"
}

# freeway's config needs a concrete port: ask the kernel for a free one.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_freeway() {
    FREEWAY_PORT=$(free_port)
    cat >"$WORK_DIR/freeway.yaml" <<EOF
server: { listen: 127.0.0.1:$FREEWAY_PORT }
providers:
  mock:
    plugin: openai-compat
    base_url: http://127.0.0.1:$MOCK_PORT/v1
    keys: [bench-key]
    models: [mock-model]
EOF
    # A clean environment (no provider keys, so the mock is the only provider)
    # and the temp dir as working directory (so no .env from the repo is read).
    # RUST_LOG=warn: per-request logging would be measured too.
    (cd "$WORK_DIR" && exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn \
        "$REPO_ROOT/target/release/freeway" serve --config "$WORK_DIR/freeway.yaml") \
        >"$WORK_DIR/freeway.out" 2>"$WORK_DIR/freeway.err" &
    FREEWAY_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$FREEWAY_PID" 2>/dev/null || die "freeway exited at start-up: $(cat "$WORK_DIR/freeway.err")"
        if python3 - "$FREEWAY_PORT" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1).read()
PY
            log "freeway on 127.0.0.1:$FREEWAY_PORT (pid $FREEWAY_PID)"
            return 0
        fi
        sleep 0.05
    done
    die "freeway did not answer /health: $(cat "$WORK_DIR/freeway.err")"
}

# CPU time freeway has used so far, in clock ticks: utime + stime, fields 14
# and 15 of /proc/PID/stat. The command name (field 2) may hold spaces, so
# count fields from the last ')'.
freeway_cpu_ticks() {
    local stat rest
    stat=$(<"/proc/$FREEWAY_PID/stat")
    rest=${stat##*) }
    local -a fields
    read -r -a fields <<<"$rest"
    echo $((fields[11] + fields[12]))
}

# --- requests ----------------------------------------------------------------

# A realistic ~1 KB chat request: a system prompt and a user message padded
# with text. $1 is true or false for "stream".
make_body() {
    python3 - "$1" <<'PY'
import json, sys
stream = sys.argv[1] == "true"
filler = ("The quarterly report covers revenue, costs, hiring and the product roadmap. "
          "Summarise the main risks and the actions proposed for each of them. ")
user = "Please read the following notes and answer briefly.\n"
while len(user) < 820:
    user += filler
body = {
    "model": "mock/mock-model",
    "messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in plain English."},
        {"role": "user", "content": user[:820]},
    ],
    "temperature": 0.2,
    "max_tokens": 256,
    "stream": stream,
}
if stream:
    body["stream_options"] = {"include_usage": True}
print(json.dumps(body, separators=(",", ":")))
PY
}

# One request through freeway before measuring, so that a broken setup fails
# early with a readable message instead of a table full of errors.
smoke_test() {
    local name=$1 body_file=$2 code
    code=$(python3 - "http://127.0.0.1:$FREEWAY_PORT/v1/chat/completions" "$body_file" "$WORK_DIR/smoke.out" <<'PY'
import sys, urllib.request, urllib.error
url, body_file, out = sys.argv[1:4]
req = urllib.request.Request(url, data=open(body_file, "rb").read(), headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        status, data = r.status, r.read()
except urllib.error.HTTPError as e:
    status, data = e.code, e.read()
open(out, "wb").write(data)
print(status)
PY
    ) || code="no answer"
    # A 2xx is not enough: the answer must be the mock's, passed through.
    local expect='"usage"'
    if [[ "$name" == stream ]]; then expect='data: [DONE]'; fi
    if [[ "$code" != 2* ]] || ! grep -qF "$expect" "$WORK_DIR/smoke.out"; then
        printf 'error: %s request through freeway answered %s\n--- body:\n%s\n--- freeway stderr:\n%s\n' \
            "$name" "$code" "$(head -c 2000 "$WORK_DIR/smoke.out" 2>/dev/null)" \
            "$(tail -n 40 "$WORK_DIR/freeway.err")" >&2
        exit 1
    fi
}

# --- measuring ---------------------------------------------------------------

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
    t0=$(freeway_cpu_ticks)
    run_oha "http://127.0.0.1:$FREEWAY_PORT/v1/chat/completions" "$body" "$conc" "$freeway_json"
    t1=$(freeway_cpu_ticks)
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
    local cpu_model
    cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
    echo
    echo "machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}; $OHA_VERSION; ${DURATION}s per run"
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

# --- main --------------------------------------------------------------------

main() {
    build
    ensure_oha
    CLK_TCK=$(getconf CLK_TCK)

    make_body false >"$WORK_DIR/body-non-stream.json"
    make_body true >"$WORK_DIR/body-stream.json"
    log "request bodies: $(wc -c <"$WORK_DIR/body-non-stream.json") bytes (non-stream), $(wc -c <"$WORK_DIR/body-stream.json") bytes (stream)"

    start_mock
    start_freeway
    smoke_test non-stream "$WORK_DIR/body-non-stream.json"
    smoke_test stream "$WORK_DIR/body-stream.json"

    local mode conc
    for mode in non-stream stream; do
        for conc in $CONCURRENCY; do
            measure "$mode" "$WORK_DIR/body-$mode.json" "$conc"
        done
    done

    print_table
    ((${#FAILURES[@]} == 0))
}

main "$@"

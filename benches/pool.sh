#!/usr/bin/env bash
# Pool benchmark: how much of a pool of free-tier keys reaches the clients,
# and how many upstream calls the gateway wastes on refusals.
#
#   benches/pool.sh                              # ~11 minutes: 10 runs of 120 s, two at a time
#   DURATION=60 LOADS=100 RESTARTS= benches/pool.sh   # a quick look (2 runs)
#   DURATION=540 DAY=180 benches/pool.sh         # longer, three 180 s "days" per run
#
# It builds freeway, the simulated pool (examples/pool_sim.rs: eight
# providers with 2-3 keys each, per-key RPM and RPD, four ways of refusing:
# Retry-After, Gemini-style JSON body, Groq-style x-ratelimit-* headers,
# bare 429; 1 % 5xx and 2 % slow answers) and the open-loop client
# (examples/pool_client.rs), then runs, for each load in LOADS (percent of
# the pool's capacity) and for 100 % with a restart half-way (graceful
# SIGTERM, then kill -9), the gateway twice side by side, each in front of
# its own sim:
#   - limits declared: every provider's rpm (and rpd, see DAY) in the config;
#   - limits none: nothing declared, freeway learns from the answers.
# Every run has its own sim, its own freeway (release build, fresh state
# file; a restart reuses the same config and state file at once) and its
# own client, on free loopback ports. The load goes to model `free`, the
# gateway's pool of free models (every sim provider is `free: true`): that
# is what a free-tier user asks for, and it lets freeway order and fall
# back between providers itself.
#
# Capacity of the pool over a run of T seconds: the sum over keys of
# min(rpm × minutes, rpd × days), minutes and days counted whole (T/60 and
# T/DAY rounded up: a started minute or day is usable whole). Offered load is a Poisson process at the
# given fraction of capacity / T. At the end one table (stdout): capacity,
# offered, delivered (2xx), efficiency = delivered / min(offered,
# capacity), the client's 429s with and without Retry-After, its 5xx and
# answers that never came, latency p50/p95 of the 2xx, and the upstream
# calls refused per 100 delivered, by cause (see examples/pool_sim.rs):
# first (first contact), hdr0 (a header had said 0 remaining), race
# (concurrent requests filled the window), early (before the announced
# Retry-After / retryDelay / reset), blind (a key that had refused without
# saying until when, asked again in the same window), rest (one of hdr0,
# early, blind within 10 s after a restart: told before it, forgotten).
#
# DAY: freeway counts RPD over a rolling 24 hours of real time (or a
# provider's calendar day): it cannot be told that a day is shorter. So by
# default DAY = DURATION (each run is one sim day) and the declared config
# carries rpd too; with DAY < DURATION the sim resets its daily counters
# every DAY seconds but the declared config carries only rpm, since a
# declared rpd would idle each key after its first sim day for 24 hours
# (and a Gemini PerDay 429 still cools its key until freeway's next reset,
# past the end of the run).
#
# Environment:
#   DURATION     seconds of load per run (default 120)
#   DAY          the sim's day in seconds (default DURATION)
#   LOADS        percents of capacity, without restart (default "60 100 150")
#   RESTARTS     restarts at 100 %: term and/or kill (default "term kill")
#   MODES        declared and/or none (default "declared none")
#   PARALLEL     runs at once (default 2; 1 for cleaner latencies)
#   MAX_IN_FLIGHT  the client's cap on outstanding requests (default 256)
#   SEED         seeds the sims and the clients (default 1)
#   KEEP_WORK=1  keep the temp dir (configs, logs, per-request records)
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-120}
DAY=${DAY:-$DURATION}
LOADS=${LOADS-"60 100 150"}
RESTARTS=${RESTARTS-"term kill"}
MODES=${MODES:-"declared none"}
PARALLEL=${PARALLEL:-2}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-256}
SEED=${SEED:-1}
RESTART_WINDOW=10

need python3 curl

build() {
    log "building freeway, the simulated pool and the pool client (release)"
    cargo build --release --bin freeway --example pool_sim --example pool_client
}

# The freeway config for a sim: every provider free, limits per MODE.
# write_config POOL_JSON SIM_PORT PORT MODE DIR
write_config() {
    python3 - "$@" "$DURATION" "$DAY" <<'PY'
import json, sys
pool_file, sim_port, port, mode, run_dir, duration, day = sys.argv[1:8]
pool = json.load(open(pool_file))
one_day = float(duration) <= float(day)
lines = [
    "# The pool benchmark's freeway: the simulated providers only.",
    f"server: {{ listen: 127.0.0.1:{port} }}",
    "providers:",
]
for p in pool["providers"]:
    lines += [
        f"  {p['name']}:",
        f"    plugin: {p['plugin']}",
        f"    base_url: http://127.0.0.1:{sim_port}{p['path']}",
        f"    keys: [{', '.join(p['keys'])}]",
        "    free: true",
        f"    models: [{p['model']}]",
    ]
    if mode == "declared":
        rpd = f", rpd: {p['rpd']}" if one_day else ""
        lines.append(f"    limits: {{ rpm: {p['rpm']}{rpd} }}")
lines += [
    "discovery: { enabled: false }",
    f"state: {{ path: {run_dir}/state.db }}",
]
open(f"{run_dir}/freeway.yaml", "w").write("\n".join(lines) + "\n")
PY
}

# capacity POOL_JSON: requests the pool can serve in DURATION seconds.
capacity() {
    python3 - "$1" "$DURATION" "$DAY" <<'PY'
import json, math, sys
pool = json.load(open(sys.argv[1]))
t, day = float(sys.argv[2]), float(sys.argv[3])
# Whole windows: a sliding minute lets rpm through in each started minute
# (a run of 30 s can still use a whole minute's rpm), a day rpd in each
# started day.
minutes, days = math.ceil(t / 60 - 1e-9), math.ceil(t / day - 1e-9)
print(sum(min(p["rpm"] * minutes, p["rpd"] * days) * len(p["keys"]) for p in pool["providers"]))
PY
}

# start_gateway DIR PORT NAME: freeway on its config (no log spam: warn).
start_gateway() {
    local dir=$1 port=$2 name=$3
    (cd "$dir" && exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn \
        "$BIN_DIR/freeway" serve --config "$dir/freeway.yaml") >"$dir/$name.out" 2>"$dir/$name.err" &
    GW_PID=$!
    wait_http "http://127.0.0.1:$port/health" "$GW_PID" ||
        die "$name did not answer /health: $(tail -n 40 "$dir/$name.err")"
}

# run_one NAME MODE LOAD RESTART(none|term|kill): one run, in its own
# folder, stopping what it started when it ends. Writes DIR/row.json.
run_one() {
    local name=$1 mode=$2 load=$3 restart=$4
    local dir="$WORK_DIR/$name-$mode"
    mkdir -p "$dir"
    # Global in this subshell (not local): the EXIT trap runs after
    # run_one has returned.
    RUN_PIDS=()
    # shellcheck disable=SC2317  # called by the trap
    stop_all() {
        local pid
        for pid in "${RUN_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    }
    trap stop_all EXIT
    trap 'exit 130' INT TERM

    "$BIN_DIR/examples/pool_sim" --day "$DAY" --seed "$SEED" --restart-window "$RESTART_WINDOW" \
        >"$dir/sim.out" 2>"$dir/sim.err" &
    local sim_pid=$!
    RUN_PIDS+=("$sim_pid")
    wait_for_line "$dir/sim.out" '^listening on ' "$sim_pid" || die "the sim did not start: $(cat "$dir/sim.err")"
    local sim_port
    sim_port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$dir/sim.out")
    local sim="http://127.0.0.1:$sim_port"
    curl -sf "$sim/pool" >"$dir/pool.json"

    local port
    port=$(free_port)
    write_config "$dir/pool.json" "$sim_port" "$port" "$mode" "$dir"
    start_gateway "$dir" "$port" freeway
    RUN_PIDS+=("$GW_PID")

    local cap rate
    cap=$(capacity "$dir/pool.json")
    rate=$(python3 -c "import sys; print(float(sys.argv[1]) * float(sys.argv[2]) / 100 / float(sys.argv[3]))" "$cap" "$load" "$DURATION")
    log "$name/$mode: capacity $(printf '%.0f' "$cap") requests in ${DURATION}s, offering $load % ($rate/s)"

    curl -sf -X POST "$sim/start" >/dev/null
    "$BIN_DIR/examples/pool_client" --url "http://127.0.0.1:$port" --rate "$rate" --duration "$DURATION" \
        --max-in-flight "$MAX_IN_FLIGHT" --seed "$SEED" --log "$dir/requests.txt" \
        >"$dir/client.json" 2>"$dir/client.err" &
    local client_pid=$!
    RUN_PIDS+=("$client_pid")

    if [[ "$restart" != none ]]; then
        sleep "$(python3 -c "import sys; print(float(sys.argv[1]) / 2)" "$DURATION")"
        local old=$GW_PID t0=$SECONDS
        if [[ "$restart" == kill ]]; then
            kill -9 "$old"
        else
            kill -TERM "$old"
        fi
        # A graceful stop drains what is in flight; wait for the exit either way.
        wait "$old" 2>/dev/null || true
        curl -sf -X POST "$sim/restarted" >/dev/null
        start_gateway "$dir" "$port" freeway-2
        RUN_PIDS+=("$GW_PID")
        log "$name/$mode: restarted (${restart}) in $((SECONDS - t0)) s"
    fi

    wait "$client_pid" || die "$name/$mode: the client failed: $(cat "$dir/client.err")"
    curl -sf "$sim/stats" >"$dir/stats.json"
    python3 - "$name" "$mode" "$load" "$cap" "$dir" >"$dir/row.json" <<'PY'
import json, sys
name, mode, load, cap, d = sys.argv[1:6]
client = json.load(open(f"{d}/client.json"))
stats = json.load(open(f"{d}/stats.json"))
causes = ["first_contact", "header_zero", "race", "early_reprobe", "blind_reprobe", "after_restart"]
refused = {c: sum(p["refused"][c] for p in stats["providers"]) for c in causes}
print(json.dumps({
    "name": name, "mode": mode, "load": int(load), "capacity": float(cap),
    "client": client, "refused": refused,
    "served": sum(p["served"] for p in stats["providers"]),
    "faults": sum(p["faults"] for p in stats["providers"]),
    "by_provider": stats["providers"],
}))
PY
}

print_table() {
    python3 - "$WORK_DIR" "$@" <<'PY'
import json, sys
work, names = sys.argv[1], sys.argv[2:]
rows = [json.load(open(f"{work}/{n}/row.json")) for n in names]
head = ("run", "limits", "cap", "offer", "deliv", "eff%", "429+RA", "429-RA", "5xx", "noans",
        "p50ms", "p95ms", "ref/100", "first", "hdr0", "race", "early", "blind", "rest")
fmt = "{:<10} {:<8} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6} {:>4} {:>5} {:>6} {:>6} {:>7} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5}"
print(fmt.format(*head))
for r in rows:
    c = r["client"]
    ok = c["ok"]
    per100 = lambda n: f"{100 * n / ok:.1f}" if ok else "-"
    refused = sum(r["refused"].values())
    eff = 100 * ok / min(c["offered"], r["capacity"]) if c["offered"] else 0
    print(fmt.format(
        r["name"], r["mode"], round(r["capacity"]), c["offered"], ok, f"{eff:.1f}",
        c["r429_ra"], c["r429_bare"], c["r5xx"], c["no_answer"] + c["dropped"],
        round(c["p50_ms"]), round(c["p95_ms"]), per100(refused),
        *(per100(r["refused"][k]) for k in ("first_contact", "header_zero", "race", "early_reprobe", "blind_reprobe", "after_restart"))))
print()
print("upstream refusals by provider style (sum over runs, by cause):")
styles = {}
for r in rows:
    for p in r["by_provider"]:
        s = styles.setdefault(p["style"], {})
        for k, v in p["refused"].items():
            s[k] = s.get(k, 0) + v
for style, counts in styles.items():
    print(f"  {style:<12} " + ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none")
PY
}

main() {
    build
    local -a runs=()
    local load restart mode
    for load in $LOADS; do runs+=("load-$load:$load:none"); done
    for restart in $RESTARTS; do runs+=("$restart-100:100:$restart"); done
    local -a jobs=() names=()
    local spec name
    for spec in "${runs[@]}"; do
        IFS=: read -r name load restart <<<"$spec"
        for mode in $MODES; do
            # Each run in a subshell of its own: its trap stops its processes.
            (run_one "$name" "$mode" "$load" "$restart") &
            jobs+=($!)
            track $!
            names+=("$name-$mode")
            if ((${#jobs[@]} >= PARALLEL)); then
                wait "${jobs[0]}" || die "a run failed (KEEP_WORK=1 keeps $WORK_DIR)"
                jobs=("${jobs[@]:1}")
            fi
        done
    done
    local job
    for job in "${jobs[@]}"; do
        wait "$job" || die "a run failed (KEEP_WORK=1 keeps $WORK_DIR)"
    done
    echo
    echo "pool benchmark: $(machine_line); ${DURATION}s per run, day ${DAY}s, $PARALLEL runs at once, model free"
    echo "(eff% = delivered / min(offered, capacity); noans = no HTTP answer or not sent over the in-flight cap;"
    echo " p50/p95 over 2xx; ref/100 = upstream calls refused per 100 delivered, then by cause)"
    echo
    print_table "${names[@]}"
}

main "$@"

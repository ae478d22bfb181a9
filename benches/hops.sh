#!/usr/bin/env bash
# Where a proxied request's time goes at concurrency 1, hop by hop, for
# nginx and freeway in front of the same mock upstream:
#
#   benches/hops.sh                              # this tree's freeway
#   FREEWAY=/path/to/freeway benches/hops.sh     # another build (and the mock built)
#   STREAM=true FREEWAY_SERVER='workers: 1, busy_poll: 0s' benches/hops.sh
#
# For each proxy, wrk sends one request at a time while `perf record`
# traces every system call and context switch on the machine for
# TRACE_SECONDS. Each request is then cut at the writes that carry it:
#
#   to proxy  the client's write → the proxy has read the request (the
#             wake-up of a sleeping proxy, or a polling one's next look)
#   work in   → the proxy's write to the upstream (route, translate)
#   upstream  → the mock's write of its reply
#   to proxy  → the proxy has read the reply
#   work out  → the proxy's write to the client (decode, answer)
#   to client → the client's first return from the kernel
#
# and the median of each hop is printed, with the proxy's system calls per
# request. Tracing costs each system call about a microsecond, so compare
# the two proxies within one run, never with untraced figures; and freeway
# runs with busy polling off unless FREEWAY_SERVER says otherwise, since a
# polling worker's every look is a traced system call (measured: 114 µs a
# round trip traced with it, 90 without, where untraced it saves ~50).
# Needs perf
# (Debian's linux-perf) and the right to trace (root, or
# kernel.perf_event_paranoid ≤ -1).
#
# Environment:
#   FREEWAY         the freeway binary (default: built here)
#   FREEWAY_SERVER  `server:` settings for freeway (default `busy_poll: 0s`)
#   STREAM          true: streamed requests (default false)
#   MODEL           the model the requests name (default `mock/mock-model`)
#   TRACE_SECONDS   how long each proxy is traced (default 0.5)
#   KEEP_WORK=1     keep the temp dir (configs, traces)
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TRACE_SECONDS=${TRACE_SECONDS:-0.5}
STREAM=${STREAM:-false}

ensure_debian wrk nginx perf=linux-perf
need python3
perf record -q -a -e raw_syscalls:sys_enter -o "$WORK_DIR/probe.data" -- true >/dev/null 2>&1 ||
    die "perf cannot trace system calls here: run as root, or set kernel.perf_event_paranoid to -1"

if [[ -n "${FREEWAY:-}" && -x "$BIN_DIR/examples/mock_upstream" ]]; then
    [[ -x "$FREEWAY" ]] || die "FREEWAY=$FREEWAY is not an executable"
else
    log "building freeway and the mock upstream (release)"
    cargo build --release --bin freeway --example mock_upstream
fi
FREEWAY=$(realpath "${FREEWAY:-$BIN_DIR/freeway}")

make_body "$STREAM" "${MODEL:-mock/mock-model}" >"$WORK_DIR/body.json"
write_wrk_script "$WORK_DIR/body.json" "$WORK_DIR/wrk.lua"
start_mock
start_nginx
FREEWAY_PORT=$(free_port)
write_freeway_config "$FREEWAY_PORT" "$WORK_DIR/freeway.yaml" "" "${FREEWAY_SERVER:-busy_poll: 0s}"
start_freeway "$FREEWAY" "$WORK_DIR/freeway.yaml" "$FREEWAY_PORT" warn freeway
mode=$([[ $STREAM == true ]] && echo stream || echo non-stream)
smoke_test "$mode" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$WORK_DIR/body.json" "$WORK_DIR/nginx/error.log"
smoke_test "$mode" "http://127.0.0.1:$FREEWAY_PORT/v1/chat/completions" "$WORK_DIR/body.json" "$WORK_DIR/freeway.err"

# trace NAME PORT: wrk at concurrency 1 for a second to warm up, then traced.
trace() {
    local name=$1 port=$2 url="http://127.0.0.1:$2/v1/chat/completions" wrk_pid
    wrk -t1 -c1 -d1s -s "$WORK_DIR/wrk.lua" "$url" >/dev/null
    wrk -t1 -c1 -d"$(python3 -c "import math; print(math.ceil($TRACE_SECONDS) + 2)")s" \
        -s "$WORK_DIR/wrk.lua" "$url" >"$WORK_DIR/wrk-$name.txt" &
    wrk_pid=$!
    sleep 1
    perf record -q -a -e raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch \
        -o "$WORK_DIR/$name.data" -- sleep "$TRACE_SECONDS" >/dev/null 2>&1 ||
        die "perf record failed for $name"
    wait "$wrk_pid"
    perf script -i "$WORK_DIR/$name.data" -F comm,pid,tid,cpu,time,event,trace >"$WORK_DIR/$name.trace" 2>/dev/null
    log "$name: $(wc -l <"$WORK_DIR/$name.trace") events traced"
}
trace nginx "$NGINX_PORT"
trace freeway "$FREEWAY_PORT"

echo "$(machine_line); concurrency 1, $mode, ${TRACE_SECONDS}s traced per proxy"
python3 - "$WORK_DIR/nginx.trace" "$WORK_DIR/freeway.trace" "$MOCK_PID" <<'PY'
import re, statistics, sys

SENDS = {1, 20, 44, 46}           # write, writev, sendto, sendmsg
LINE = re.compile(r'^\s*(.+?)\s+(\d+)/\d+\s+\[\d+\]\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(?: = (-?\d+))?')
READS = {0, 19, 45, 47}           # read, readv, recvfrom, recvmsg
MOCK = int(sys.argv[3])
HOPS = ["to proxy (request)", "work in", "upstream", "to proxy (reply)", "work out", "to client"]

def role(comm, pid, proxy):
    if pid == MOCK:
        return "mock"
    if comm == "wrk":
        return "client"
    if comm.startswith(proxy):
        return "proxy"
    return None

def hops(path, proxy):
    """Each request's six hops (µs), and the proxy's system calls in it."""
    found, calls, at = [], [], None
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, t, kind, nr, ret = m.groups()
        who, t, nr = role(comm.strip(), int(pid), proxy), float(t) * 1e6, int(nr)
        read = kind == "exit" and nr in READS and ret is not None and int(ret) > 0
        if who is None:
            continue
        if who == "client" and kind == "enter" and nr in SENDS:
            at = {"marks": [t], "calls": 0}
            continue
        if at is None:
            continue
        marks = at["marks"]
        if who == "proxy" and kind == "enter":
            at["calls"] += 1
        step = len(marks)
        if (step in (1, 4) and who == "proxy" and read) \
                or (step in (2, 5) and who == "proxy" and kind == "enter" and nr in SENDS) \
                or (step == 3 and who == "mock" and kind == "enter" and nr in SENDS) \
                or (step == 6 and who == "client" and kind == "exit"):
            marks.append(t)
        if len(marks) == 7:
            found.append([b - a for a, b in zip(marks, marks[1:])])
            calls.append(at["calls"])
            at = None
    return found, calls

results = {name: hops(path, proxy) for name, path, proxy in
           [("nginx", sys.argv[1], "nginx"), ("freeway", sys.argv[2], "freeway-worker")]}
for name, (found, _) in results.items():
    if len(found) < 100:
        sys.exit(f"only {len(found)} whole requests found in {name}'s trace: is the proxy's thread named as expected?")
print(f"{'median µs':<26} {'nginx':>8} {'freeway':>8}")
for i, hop in enumerate(HOPS):
    cells = [statistics.median(r[i] for r in results[n][0]) for n in ("nginx", "freeway")]
    print(f"{hop:<26} {cells[0]:>8.1f} {cells[1]:>8.1f}")
totals = [statistics.median(sum(r) for r in results[n][0]) for n in ("nginx", "freeway")]
print(f"{'the whole round trip':<26} {totals[0]:>8.1f} {totals[1]:>8.1f}")
calls = [statistics.median(results[n][1]) for n in ("nginx", "freeway")]
print(f"{'proxy system calls':<26} {calls[0]:>8.0f} {calls[1]:>8.0f}")
print(f"{'requests traced':<26} {len(results['nginx'][0]):>8} {len(results['freeway'][0]):>8}")
PY

# Helpers shared by the bench scripts (load.sh, hops.sh, soak.sh, ...): sourced, not run.
#
# The sourcing script sets `set -euo pipefail` first. This file defines
# REPO_ROOT, BIN_DIR (where cargo puts release binaries: $CARGO_TARGET_DIR
# or target/), WORK_DIR (a temp dir, removed at exit unless KEEP_WORK=1),
# and an exit trap that stops every process started with `track`.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
cd "$REPO_ROOT"

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/freeway-bench.XXXXXX")
TRACKED_PIDS=()

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Remembers a process to stop at exit.
track() { TRACKED_PIDS+=("$1"); }

# Stops every tracked process (newest first) and removes the temp files,
# however the script ends. A process that ignores SIGTERM for 5 s gets
# SIGKILL.
cleanup() {
    local status=$? pid i
    for ((i = ${#TRACKED_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${TRACKED_PIDS[i]}
        kill -0 "$pid" 2>/dev/null || continue
        kill "$pid" 2>/dev/null || true
        for _ in {1..50}; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        log "kept the temp files in $WORK_DIR"
    else
        rm -rf "$WORK_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
    done
}

# Installs the Debian packages of the named tools that are missing
# (apt-get, with sudo unless root; `apt-get update` once if the first try
# fails), then checks they are there. ensure_debian TOOL[=PACKAGE]...
ensure_debian() {
    local spec tool package missing=()
    for spec in "$@"; do
        tool=${spec%%=*}
        package=${spec#*=}
        command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        log "installing ${missing[*]} from the Debian packages"
        $sudo apt-get install -y "${missing[@]}" >/dev/null 2>&1 ||
            { $sudo apt-get update >/dev/null 2>&1 && $sudo apt-get install -y "${missing[@]}" >/dev/null 2>&1; } ||
            die "could not install ${missing[*]} (apt-get install ${missing[*]})"
    fi
    for spec in "$@"; do
        need "${spec%%=*}"
    done
}

# Waits until FILE has a line matching PATTERN (a server's start-up line),
# as long as PID lives.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 i
    for ((i = 0; i < 200; i++)); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# A free loopback port (for configs that need a concrete one).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until URL answers (any status), as long as PID lives.
wait_http() {
    local url=$1 pid=$2 i
    for ((i = 0; i < 400; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if python3 - "$url" <<'PY' 2>/dev/null; then
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1).read()
except urllib.error.HTTPError:
    pass
PY
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# Starts examples/mock_upstream (built) and sets MOCK_PID and MOCK_PORT.
start_mock() {
    "$BIN_DIR/examples/mock_upstream" >"$WORK_DIR/mock.out" 2>"$WORK_DIR/mock.err" &
    MOCK_PID=$!
    track "$MOCK_PID"
    wait_for_line "$WORK_DIR/mock.out" '^listening on ' "$MOCK_PID" ||
        die "the mock upstream did not start: $(cat "$WORK_DIR/mock.err")"
    MOCK_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK_DIR/mock.out")
    [[ -n "$MOCK_PORT" ]] || die "cannot read the mock's port from: $(cat "$WORK_DIR/mock.out")"
    log "mock upstream on 127.0.0.1:$MOCK_PORT (pid $MOCK_PID)"
}

# start_freeway BINARY CONFIG PORT RUST_LOG NAME [VAR=VALUE...]
# Starts a freeway binary and waits for its /health; sets STARTED_PID.
# stdout and stderr go to $WORK_DIR/NAME.out and NAME.err. It runs with a
# clean environment (no provider keys from the caller's, so the mock is the
# only provider; plus the VAR=VALUE given) and the temp dir as working
# directory (so no .env from the repo is read).
start_freeway() {
    local bin=$1 config=$2 port=$3 level=$4 name=$5
    shift 5
    (cd "$WORK_DIR" && exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG="$level" "$@" \
        "$bin" serve --config "$config") >"$WORK_DIR/$name.out" 2>"$WORK_DIR/$name.err" &
    STARTED_PID=$!
    track "$STARTED_PID"
    wait_http "http://127.0.0.1:$port/health" "$STARTED_PID" ||
        die "$name did not answer /health: $(tail -n 40 "$WORK_DIR/$name.err")"
    log "$name on 127.0.0.1:$port (pid $STARTED_PID)"
}

# CPU time a process has used so far, in clock ticks: utime + stime, fields
# 14 and 15 of /proc/PID/stat, plus cutime + cstime (children it has
# reaped). The command name (field 2) may hold spaces, so fields are
# counted from the last ')'.
proc_cpu_ticks() {
    local stat rest
    stat=$(<"/proc/$1/stat") || return 1
    rest=${stat##*) }
    local -a f
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12] + f[13] + f[14]))
}

# The same for a process and all its live descendants (nginx's workers).
tree_cpu_ticks() {
    local root=$1 total=0 stat rest pid ppid
    local -A parent=()
    local -a f
    for stat_file in /proc/[0-9]*/stat; do
        stat=$(<"$stat_file") 2>/dev/null || continue
        pid=${stat%% *}
        rest=${stat##*) }
        read -r -a f <<<"$rest"
        parent[$pid]=${f[1]}
    done
    local -a queue=("$root") tree=()
    while ((${#queue[@]})); do
        pid=${queue[0]}
        queue=("${queue[@]:1}")
        tree+=("$pid")
        for child in "${!parent[@]}"; do
            [[ "${parent[$child]}" == "$pid" ]] && queue+=("$child")
        done
    done
    for pid in "${tree[@]}"; do
        total=$((total + $(proc_cpu_ticks "$pid" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# A realistic ~1 KB chat request for MODEL: a system prompt and a user
# message padded with text. make_body STREAM(true|false) [MODEL]
make_body() {
    python3 - "$1" "${2:-mock/mock-model}" <<'PY'
import json, sys
stream = sys.argv[1] == "true"
filler = ("The quarterly report covers revenue, costs, hiring and the product roadmap. "
          "Summarise the main risks and the actions proposed for each of them. ")
user = "Please read the following notes and answer briefly.\n"
while len(user) < 820:
    user += filler
body = {
    "model": sys.argv[2],
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

# smoke_test NAME(stream|non-stream) URL BODY_FILE ERR_FILE
# One request before measuring, so that a broken setup fails early with a
# readable message instead of a table full of errors. A 2xx is not
# enough: the answer must be the mock's, passed through.
smoke_test() {
    local name=$1 url=$2 body_file=$3 err_file=$4 code
    code=$(python3 - "$url" "$body_file" "$WORK_DIR/smoke.out" <<'PY'
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
    local expect='"usage"'
    if [[ "$name" == stream ]]; then expect='data: [DONE]'; fi
    if [[ "$code" != 2* ]] || ! grep -qF "$expect" "$WORK_DIR/smoke.out"; then
        printf 'error: %s request to %s answered %s\n--- body:\n%s\n--- server stderr:\n%s\n' \
            "$name" "$url" "$code" "$(head -c 2000 "$WORK_DIR/smoke.out" 2>/dev/null)" \
            "$(tail -n 40 "$err_file" 2>/dev/null)" >&2
        exit 1
    fi
}

machine_line() {
    local cpu_model
    cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
    echo "machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}; $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# The freeway config: the mock as the only provider, everything else default
# (so the built-in policies run).
# A third argument replaces the `state:` line: by default each server keeps
# its state in its own database in the work folder (persistence is on by
# default); `state: { path: "" }` measures memory-only. A fourth adds
# `server:` settings (`busy_poll: 200us`).
write_freeway_config() {
    local port=$1 file=$2 state=${3:-"state: { path: ${2%.yaml}.db }"} server=${4:+, $4}
    cat >"$file" <<EOF
server: { listen: 127.0.0.1:$port$server }
providers:
  mock:
    plugin: openai-compat
    base_url: http://127.0.0.1:$MOCK_PORT/v1
    keys: [bench-key]
    models: [mock-model]
$state
EOF
}

# A plain keep-alive reverse proxy in front of the mock (Debian's nginx, in
# the work folder); sets NGINX_PORT and NGINX_PID.
start_nginx() {
    need nginx
    NGINX_PORT=$(free_port)
    local dir="$WORK_DIR/nginx"
    mkdir -p "$dir"
    # Workers run as nobody when the master is root: let them into the temp dir.
    chmod 755 "$WORK_DIR" "$dir"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    # -e: the error log before the config is read (else /var/log/nginx).
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/stdout" 2>"$dir/stderr" &
    NGINX_PID=$!
    track "$NGINX_PID"
    wait_http "http://127.0.0.1:$NGINX_PORT/v1/models" "$NGINX_PID" ||
        die "nginx did not start: $(cat "$dir/stderr" "$dir/error.log" 2>/dev/null)"
    log "nginx on 127.0.0.1:$NGINX_PORT (pid $NGINX_PID, $(nginx -v 2>&1 | sed 's/.*: //'))"
}

# A wrk script: POST the body; at the end, print one line of figures.
write_wrk_script() {
    local body_file=$1 out=$2
    {
        echo 'wrk.method = "POST"'
        echo 'wrk.headers["Content-Type"] = "application/json"'
        echo 'wrk.headers["Authorization"] = "Bearer bench-key"'
        printf 'wrk.body = [==[%s]==]\n' "$(cat "$body_file")"
        cat <<'LUA'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK %d %d %d %d %d %d %d %d %d\n",
        summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
LUA
    } >"$out"
}

#!/usr/bin/env bash
# What each inbound dialect costs through the whole gateway: one release
# freeway in front of the zero-latency mock upstream, the same ~1 KB request
# sent as an OpenAI chat completion, an Anthropic message and an OpenAI
# Responses request (whole and streamed), wrk at concurrency 16, interleaved
# rounds; prints freeway's CPU time per request (utime + stime from
# /proc/PID/stat) for each. Compare within one run only.
#
#   benches/dialects.sh                 # 3 rounds of 5 s each (~2 minutes)
#   ROUNDS=1 DURATION=3 benches/dialects.sh
#   STORE=false benches/dialects.sh     # Responses requests with store: false
#   TOOLS=true benches/dialects.sh      # every request offers a tool, as agents'
#                                       # do (streams then pass the tool-call check)
#
# Environment: ROUNDS (3), DURATION (5 s), STORE (true), TOOLS (false), KEEP_WORK=1.
set -euo pipefail

# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
STORE=${STORE:-true}
TOOLS=${TOOLS:-false}
ensure_debian wrk
need python3 curl

log "building freeway and the mock upstream (release)"
cargo build --release --bin freeway --example mock_upstream >&2

mock_port=$(free_port)
"$BIN_DIR/examples/mock_upstream" --port "$mock_port" >"$WORK_DIR/mock.log" 2>&1 &
track $!
port=$(free_port)
cat >"$WORK_DIR/freeway.yaml" <<YAML
server: { listen: "127.0.0.1:$port" }
providers:
  mock:
    plugin: openai-compat
    base_url: http://127.0.0.1:$mock_port/v1
    keys: [bench-key]
    models: [mock-model]
state: { path: "" }
YAML
RUST_LOG=warn "$BIN_DIR/freeway" serve --config "$WORK_DIR/freeway.yaml" >"$WORK_DIR/freeway.log" 2>&1 &
pid=$!
track "$pid"
wait_http "http://127.0.0.1:$port/health" "$pid" || die "freeway did not start (see $WORK_DIR/freeway.log)"

WORK_DIR=$WORK_DIR STORE=$STORE TOOLS=$TOOLS python3 - <<'PY'
import json, os
work, store, tools = os.environ["WORK_DIR"], os.environ["STORE"] == "true", os.environ["TOOLS"] == "true"
schema = {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}
fill = "The quick brown fox jumps over the lazy dog. " * 18
for stream in (False, True):
    mode = "stream" if stream else "whole"
    bodies = {
        "chat": {"model": "mock/mock-model", "max_tokens": 256, "temperature": 0.2, "stream": stream,
                 "messages": [{"role": "system", "content": "You are a concise assistant."},
                              {"role": "user", "content": fill}]},
        "messages": {"model": "mock/mock-model", "max_tokens": 256, "temperature": 0.2, "stream": stream,
                     "system": "You are a concise assistant.", "messages": [{"role": "user", "content": fill}]},
        "responses": {"model": "mock/mock-model", "max_output_tokens": 256, "temperature": 0.2, "stream": stream,
                      "instructions": "You are a concise assistant.", "input": fill, "store": store},
    }
    if tools:
        bodies["chat"]["tools"] = [{"type": "function", "function": {"name": "write_file", "parameters": schema}}]
        bodies["messages"]["tools"] = [{"name": "write_file", "input_schema": schema}]
        bodies["responses"]["tools"] = [{"type": "function", "name": "write_file", "parameters": schema}]
    for name, body in bodies.items():
        text = json.dumps(body)
        open(f"{work}/{name}-{mode}.json", "w").write(text)
        open(f"{work}/{name}-{mode}.lua", "w").write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{text}]==]\n")
PY

path() { case $1 in chat) echo /v1/chat/completions ;; messages) echo /v1/messages ;; responses) echo /v1/responses ;; esac; }
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

for dialect in chat messages responses; do
    for mode in whole stream; do
        curl -sf -X POST -H 'content-type: application/json' --data "@$WORK_DIR/$dialect-$mode.json" \
            "http://127.0.0.1:$port$(path "$dialect")" >/dev/null || die "$dialect ($mode) did not answer 200"
    done
done

ticks=$(getconf CLK_TCK)
printf '%-6s %-6s %-10s %10s %12s\n' round mode dialect requests "cpu us/req"
for ((round = 1; round <= ROUNDS; round++)); do
    for mode in whole stream; do
        for dialect in chat messages responses; do
            url="http://127.0.0.1:$port$(path "$dialect")"
            wrk -t1 -c16 -d1s -s "$WORK_DIR/$dialect-$mode.lua" "$url" >/dev/null
            before=$(cpu)
            n=$(wrk -t1 -c16 -d"${DURATION}s" -s "$WORK_DIR/$dialect-$mode.lua" "$url" | awk '/requests in/ {print $1}')
            after=$(cpu)
            python3 -c "print('%-6s %-6s %-10s %10d %12.1f' % ($round, '$mode', '$dialect', $n, ($after - $before) * 1e6 / $ticks / $n))"
        done
    done
done

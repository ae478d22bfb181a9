"""Drives a running freeway with the official Anthropic Python SDK.

Usage: python3 tests/sdk/anthropic_sdk.py BASE_URL
The gateway must alias `claude-*` to a model that behaves like an agent's
(tests/it/support/mock.rs `agent`: it calls `write_file` until it sees a
tool result, then answers `done: <result>`), serve `p/limited` (always 429)
and take the token `sdk-test-token-0123456789`; tests/it/messages.rs sets
that up and runs this script.
"""

import sys

import anthropic

TOKEN = "sdk-test-token-0123456789"
MODEL = "claude-sonnet-4-5"
TOOLS = [
    {
        "name": "write_file",
        "description": "Write a file.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    }
]
ASK = {"role": "user", "content": "write hello.txt"}
WRITTEN = {"path": "hello.txt", "content": "hi"}


def follow_up(call):
    return [
        ASK,
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "wrote 2 bytes"}]},
    ]


def main(base_url: str) -> None:
    client = anthropic.Anthropic(base_url=base_url, api_key=TOKEN, max_retries=0)

    first = client.messages.create(model=MODEL, max_tokens=256, tools=TOOLS, messages=[ASK])
    assert first.model == MODEL, first.model
    assert first.stop_reason == "tool_use", first
    call = next(b for b in first.content if b.type == "tool_use")
    assert (call.name, call.input) == ("write_file", WRITTEN), call
    assert first.usage.input_tokens == 11 and first.usage.output_tokens == 5, first.usage

    second = client.messages.create(model=MODEL, max_tokens=256, tools=TOOLS, messages=follow_up(call))
    assert second.stop_reason == "end_turn", second
    assert second.content[0].text == "done: wrote 2 bytes", second.content

    with client.messages.stream(model=MODEL, max_tokens=256, tools=TOOLS, messages=[ASK]) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use", streamed
    streamed_call = next(b for b in streamed.content if b.type == "tool_use")
    assert streamed_call.input == WRITTEN, streamed_call

    with client.messages.stream(model=MODEL, max_tokens=256, tools=TOOLS, messages=follow_up(streamed_call)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "done: wrote 2 bytes", text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5, final

    counted = client.messages.count_tokens(model=MODEL, messages=[ASK], tools=TOOLS)
    assert counted.input_tokens > 0, counted

    try:
        client.messages.create(model="no-such-model", max_tokens=16, messages=[ASK])
    except anthropic.NotFoundError as error:
        assert "unknown model" in str(error), error
    else:
        raise AssertionError("an unknown model did not raise NotFoundError")

    try:
        client.messages.create(model="p/limited", max_tokens=16, messages=[ASK])
    except anthropic.RateLimitError as error:
        assert error.response.headers.get("retry-after"), error.response.headers
    else:
        raise AssertionError("a rate-limited model did not raise RateLimitError")

    try:
        client.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": [{"type": "nope"}]}])
    except anthropic.BadRequestError as error:
        assert "messages[0].content[0]" in str(error), error
    else:
        raise AssertionError("a malformed request did not raise BadRequestError")

    bad = anthropic.Anthropic(base_url=base_url, api_key="wrong", max_retries=0)
    try:
        bad.messages.create(model=MODEL, max_tokens=16, messages=[ASK])
    except anthropic.AuthenticationError:
        pass
    else:
        raise AssertionError("a wrong token did not raise AuthenticationError")

    listed = client.models.list()
    assert any(m.id == "p/agent" for m in listed.data), listed

    print("anthropic sdk ok")


if __name__ == "__main__":
    main(sys.argv[1])

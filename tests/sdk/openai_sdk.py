"""Drives a running freeway with the official OpenAI Python SDK.

Usage: python3 tests/sdk/openai_sdk.py BASE_URL
The gateway must serve provider `p` with models `ok` (answers) and `cut`
(a stream that breaks after its first chunk), and a route `demo` whose first
target fails; tests/it/sdk.rs sets that up and runs this script.
"""

import sys

import openai
from openai import OpenAI

MESSAGES = [{"role": "user", "content": "hello"}]


def main(base_url: str) -> None:
    client = OpenAI(base_url=base_url, api_key="sdk-test-token-0123456789", max_retries=0)

    reply = client.chat.completions.create(model="p/ok", messages=MESSAGES)
    assert reply.model == "ok", reply.model
    assert reply.choices[0].message.content, reply
    assert reply.usage.total_tokens == 10, reply.usage

    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model="p/ok", messages=MESSAGES, stream=True)
        if chunk.choices
    ]
    assert "".join(pieces).startswith("part0"), pieces

    raw = client.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)
    assert raw.headers["x-routed-via"] == "p/ok", raw.headers
    assert raw.headers["x-fallback-attempts"] == "1", raw.headers
    assert raw.parse().model == "ok"

    try:
        for _ in client.chat.completions.create(model="p/cut", messages=MESSAGES, stream=True):
            pass
    except openai.APIError as error:
        assert "broke off" in str(error), error
    else:
        raise AssertionError("a stream that failed after its first byte did not raise")

    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    except openai.NotFoundError as error:
        assert "unknown model" in str(error), error
    else:
        raise AssertionError("an unknown model did not raise NotFoundError")

    bad = OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    try:
        bad.chat.completions.create(model="p/ok", messages=MESSAGES)
    except openai.AuthenticationError:
        pass
    else:
        raise AssertionError("a wrong token did not raise AuthenticationError")

    print("openai sdk ok")


if __name__ == "__main__":
    main(sys.argv[1])

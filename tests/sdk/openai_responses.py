"""Drives a running freeway's Responses API with the official OpenAI Python SDK.

Usage: python3 tests/sdk/openai_responses.py BASE_URL
The gateway must serve `p/agent` (tests/it/support/mock.rs `agent`: it calls
`write_file` until it sees a tool result, then answers `done: <result>`) and
take the token `sdk-test-token-0123456789`; tests/it/responses.rs sets that
up and runs this script.
"""

import json
import sys

from openai import OpenAI

TOKEN = "sdk-test-token-0123456789"
MODEL = "p/agent"
TOOLS = [
    {
        "type": "function",
        "name": "write_file",
        "description": "Write a file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    }
]
WRITTEN = {"path": "hello.txt", "content": "hi"}


def main(base_url: str) -> None:
    client = OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0)

    first = client.responses.create(model=MODEL, input="write hello.txt", tools=TOOLS)
    assert first.status == "completed", first
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "write_file" and json.loads(call.arguments) == WRITTEN, call

    items = [
        {"role": "user", "content": "write hello.txt"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "wrote 2 bytes"},
    ]
    second = client.responses.create(model=MODEL, input=items, tools=TOOLS)
    assert second.output_text == "done: wrote 2 bytes", second
    assert second.usage.input_tokens == 11 and second.usage.output_tokens == 5, second.usage

    chained = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "wrote 2 bytes"}],
        tools=TOOLS,
    )
    assert chained.output_text == "done: wrote 2 bytes", chained

    events = list(client.responses.create(model=MODEL, input="write hello.txt", tools=TOOLS, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "response.function_call_arguments.delta" in kinds, kinds
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    done = events[-1].response
    streamed_call = next(item for item in done.output if item.type == "function_call")
    assert json.loads(streamed_call.arguments) == WRITTEN, streamed_call

    with client.responses.stream(model=MODEL, input=items, tools=TOOLS) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "done: wrote 2 bytes" and final.output_text == text, (text, final)

    try:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_unknown")
    except Exception as error:  # openai.BadRequestError
        assert "previous_response_id" in str(error), error
    else:
        raise AssertionError("an unknown previous_response_id did not fail")

    print("openai responses ok")


if __name__ == "__main__":
    main(sys.argv[1])

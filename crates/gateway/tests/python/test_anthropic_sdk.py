#!/usr/bin/env python3
"""The gateway as the official `anthropic` Python SDK sees it.

Run by tests/it/python_sdk.rs against the real binary and the mock upstream,
in a venv made from requirements.txt beside this file, once per channel kind
(the gateway translates the Messages API to whatever the channel speaks).
Environment:

  GAP_ROOT_URL   the gateway's root URL, e.g. http://127.0.0.1:PORT (the SDK
                 appends /v1/messages itself)
  GAP_API_KEY    a key whose user has balance
  GAP_POOR_KEY   a key whose user has a zero balance
  GAP_MODEL      the model to ask for

Prints one line per check and exits non-zero if any check failed.
"""

import asyncio
import os
import sys
import traceback

import anthropic

ROOT_URL = os.environ["GAP_ROOT_URL"]
API_KEY = os.environ["GAP_API_KEY"]
POOR_KEY = os.environ["GAP_POOR_KEY"]
MODEL = os.environ["GAP_MODEL"]

MAX_TOKENS = 200
MESSAGES = [{"role": "user", "content": "Say hello to the SDK test."}]
WEATHER = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "The current weather at a place.",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    }
]


def make_client(api_key=API_KEY, **kw):
    return anthropic.Anthropic(base_url=ROOT_URL, api_key=api_key, max_retries=0, timeout=60, **kw)


client = make_client()
results = []  # (name, error or None)


def check(name):
    """Runs the decorated function at once as one check and records the outcome."""

    def run(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            detail = f"{type(e).__name__}: {e}"
            if isinstance(e, anthropic.APIStatusError):
                detail += f"\n    status={e.status_code} body={e.body!r}"
                detail += f"\n    request: {e.request.method} {e.request.url}"
            elif not isinstance(e, AssertionError):
                detail += "\n" + traceback.format_exc()
            print(f"FAIL [{MODEL}] {name}: {detail}", flush=True)
            results.append((name, detail))
        else:
            print(f"ok   [{MODEL}] {name}", flush=True)
            results.append((name, None))
        return fn

    return run


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def dump(m):
    return m.model_dump_json(exclude_unset=True)


def expect_text_message(m):
    expect(m.type == "message" and m.role == "assistant", f"not an assistant message: {dump(m)}")
    texts = [b for b in m.content if b.type == "text"]
    expect(texts and texts[0].text != "", f"no text block: {dump(m)}")
    expect(m.stop_reason == "end_turn", f"stop_reason {m.stop_reason!r}: {dump(m)}")
    expect(m.usage is not None and m.usage.input_tokens > 0, f"usage {m.usage!r}")
    expect(m.usage.output_tokens > 0, f"usage {m.usage!r}")


def expect_weather_call(m):
    uses = [b for b in m.content if b.type == "tool_use"]
    expect(uses, f"no tool_use block: {dump(m)}")
    expect(uses[0].name == "get_weather", f"tool_use {uses[0]!r}")
    expect(isinstance(uses[0].input, dict) and "location" in uses[0].input, f"input {uses[0].input!r}")
    expect(uses[0].id, f"tool_use without an id: {uses[0]!r}")
    expect(m.stop_reason == "tool_use", f"stop_reason {m.stop_reason!r}: {dump(m)}")
    expect(m.usage.input_tokens > 0 and m.usage.output_tokens > 0, f"usage {m.usage!r}")


@check("messages.create: text, usage, stop_reason end_turn")
def _():
    m = client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)
    expect_text_message(m)
    expect(m.id, f"no message id: {dump(m)}")


@check("messages.create with a system prompt (string)")
def _():
    m = client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, system="Be brief.", messages=MESSAGES)
    expect_text_message(m)


@check("messages.stream: text_stream and get_final_message() usage")
def _():
    with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, system="Be brief.", messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    expect(text != "", "text_stream yielded no text")
    joined = "".join(b.text for b in final.content if b.type == "text")
    expect(joined == text, f"final message text {joined!r} != streamed text {text!r}")
    expect_text_message(final)


@check("tools non-stream, tool_choice any: a get_weather tool_use block")
def _():
    m = client.messages.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=WEATHER, tools=TOOLS, tool_choice={"type": "any"}
    )
    expect_weather_call(m)


@check("tools stream, tool_choice any: get_final_message() has the parsed tool_use")
def _():
    with client.messages.stream(
        model=MODEL, max_tokens=MAX_TOKENS, messages=WEATHER, tools=TOOLS, tool_choice={"type": "any"}
    ) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    expect("content_block_start" in events and "message_stop" in events, f"events {events!r}")
    expect_weather_call(final)


@check("tool result round trip: tool_use then tool_result -> text")
def _():
    first = client.messages.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=WEATHER, tools=TOOLS, tool_choice={"type": "any"}
    )
    use = next(b for b in first.content if b.type == "tool_use")
    m = client.messages.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        tools=TOOLS,
        messages=[
            *WEATHER,
            {"role": "assistant", "content": [b.model_dump(exclude_unset=True) for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"}],
            },
        ],
    )
    expect_text_message(m)


@check("Bearer auth (auth_token=) works too")
def _():
    c = anthropic.Anthropic(base_url=ROOT_URL, api_key=None, auth_token=API_KEY, max_retries=0, timeout=60)
    expect_text_message(c.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES))
    c.close()


@check("models.list (Anthropic shape) contains the model")
def _():
    page = client.models.list()
    ids = [m.id for m in page]
    expect(MODEL in ids, f"models: {ids!r}")
    m = next(m for m in page.data if m.id == MODEL)
    expect(m.type == "model" and m.display_name, f"model {dump(m)}")


@check("models.retrieve (Anthropic shape)")
def _():
    m = client.models.retrieve(MODEL)
    expect(m.id == MODEL, f"model {dump(m)}")
    expect(getattr(m, "type", None) == "model", f"type is not 'model': {dump(m)}")
    expect(getattr(m, "display_name", None), f"no display_name: {dump(m)}")


@check("wrong key -> AuthenticationError (401)")
def _():
    try:
        make_client("sk-wrong").messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)
    except anthropic.AuthenticationError as e:
        expect(e.status_code == 401, f"status {e.status_code}")
        err = e.body.get("error", {}) if isinstance(e.body, dict) else {}
        expect(err.get("type") == "authentication_error", f"body {e.body!r}")
    else:
        raise AssertionError("no error for api_key=sk-wrong")


@check("zero balance -> RateLimitError (429, rate_limit_error)")
def _():
    try:
        make_client(POOR_KEY).messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)
    except anthropic.RateLimitError as e:
        expect(e.status_code == 429, f"status {e.status_code}")
        err = e.body.get("error", {}) if isinstance(e.body, dict) else {}
        expect(err.get("type") == "rate_limit_error", f"body {e.body!r}")
    else:
        raise AssertionError("no error for a user with zero balance")


@check("unknown model -> NotFoundError (404)")
def _():
    try:
        client.messages.create(model="no-such-model-xyz", max_tokens=MAX_TOKENS, messages=MESSAGES)
    except anthropic.NotFoundError as e:
        expect(e.status_code == 404, f"status {e.status_code}")
    else:
        raise AssertionError("no error for an unknown model")


@check("AsyncAnthropic: streamed text and final usage")
def _():
    async def run():
        async with anthropic.AsyncAnthropic(base_url=ROOT_URL, api_key=API_KEY, max_retries=0, timeout=60) as ac:
            async with ac.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES) as s:
                parts = [t async for t in s.text_stream]
                return "".join(parts), await s.get_final_message()

    text, final = asyncio.run(run())
    expect(text != "", "text_stream yielded no text")
    expect_text_message(final)


client.close()
failed = [name for name, err in results if err is not None]
if failed:
    print(
        f"anthropic SDK {anthropic.__version__} [{MODEL}]: "
        f"{len(failed)} of {len(results)} checks FAILED: {', '.join(failed)}"
    )
    sys.exit(1)
print(f"anthropic SDK {anthropic.__version__} [{MODEL}]: {len(results)} checks passed")

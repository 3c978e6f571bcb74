#!/usr/bin/env python3
"""The gateway as the official `openai` Python SDK sees it.

Run by tests/it/python_sdk.rs against the real binary and the mock upstream,
in a venv made from requirements.txt beside this file. Environment:

  GAP_BASE_URL   the gateway's OpenAI base URL, e.g. http://127.0.0.1:PORT/v1
  GAP_API_KEY    a key whose user has balance
  GAP_POOR_KEY   a key whose user has a zero balance
  GAP_MODEL      the chat model to ask for (default gpt-4o-mini)
  GAP_OPENAI_ONLY_CHECKS
                 1 to also check embeddings and legacy completions (served
                 only by an OpenAI channel: translation covers chat only)

Prints one line per check and exits non-zero if any check failed.
"""

import asyncio
import json
import os
import sys
import traceback

import openai

BASE_URL = os.environ["GAP_BASE_URL"]
API_KEY = os.environ["GAP_API_KEY"]
POOR_KEY = os.environ["GAP_POOR_KEY"]

CHAT_MODEL = os.environ.get("GAP_MODEL", "gpt-4o-mini")
OPENAI_ONLY_CHECKS = os.environ.get("GAP_OPENAI_ONLY_CHECKS") == "1"
EMBED_MODEL = "text-embedding-3-small"
LEGACY_MODEL = "gpt-3.5-turbo-instruct"
MESSAGES = [{"role": "user", "content": "Say hello to the SDK test."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "unit": {"type": "string"},
                },
            },
        },
    }
]


def make_client(api_key=API_KEY):
    return openai.OpenAI(base_url=BASE_URL, api_key=api_key, max_retries=0, timeout=60)


client = make_client()
results = []  # (name, error or None)


def check(name, enabled=True):
    """Runs the decorated function at once as one check and records the outcome."""

    def run(fn):
        if not enabled:
            return fn
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            detail = f"{type(e).__name__}: {e}"
            if isinstance(e, openai.APIStatusError):
                detail += f"\n    status={e.status_code} body={e.body!r}"
                detail += f"\n    request: {e.request.method} {e.request.url}"
            elif not isinstance(e, AssertionError):
                detail += "\n" + traceback.format_exc()
            print(f"FAIL [{CHAT_MODEL}] {name}: {detail}", flush=True)
            results.append((name, detail))
        else:
            print(f"ok   [{CHAT_MODEL}] {name}", flush=True)
            results.append((name, None))
        return fn

    return run


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def chunk_dump(chunks):
    return "\n      ".join(c.model_dump_json(exclude_unset=True) for c in chunks)


@check("chat non-stream: content and usage")
def _():
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    expect(r.object == "chat.completion", f"object {r.object!r}")
    content = r.choices[0].message.content
    expect(isinstance(content, str) and content != "", f"empty content: {r.model_dump_json()}")
    expect(r.usage is not None and r.usage.prompt_tokens > 0, f"usage: {r.usage!r}")
    expect(r.usage.completion_tokens > 0, f"usage: {r.usage!r}")


@check("chat stream without stream_options: text, no usage chunk")
def _():
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True))
    expect(chunks, "no chunks")
    with_usage = [c for c in chunks if c.usage is not None]
    expect(
        not with_usage,
        "a client that did not ask for usage got usage chunk(s):\n      " + chunk_dump(with_usage),
    )
    empty = [c for c in chunks if not c.choices]
    expect(not empty, "chunk(s) with an empty `choices` list:\n      " + chunk_dump(empty))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    expect(text != "", "the content deltas reassemble to an empty string")
    expect(
        any(c.choices[0].finish_reason for c in chunks),
        "no chunk has a finish_reason:\n      " + chunk_dump(chunks),
    )


@check("chat stream with include_usage: one usage chunk, last, choices == []")
def _():
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    expect(chunks, "no chunks")
    idx = [i for i, c in enumerate(chunks) if c.usage is not None]
    expect(len(idx) == 1, f"{len(idx)} chunks with usage, want 1:\n      " + chunk_dump(chunks))
    expect(idx[0] == len(chunks) - 1, f"the usage chunk is #{idx[0]} of {len(chunks)}, not the last")
    last = chunks[-1]
    expect(last.choices == [], f"the usage chunk has choices: {last.model_dump_json()}")
    expect(last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0, f"usage {last.usage!r}")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expect(text != "", "the content deltas reassemble to an empty string")


@check("tools stream: tool_call arguments reassemble to JSON")
def _():
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        tool_choice="required",
        stream=True,
    )
    names, args = {}, {}
    finish = None
    for c in stream:
        expect(c.usage is None, f"usage chunk for a client that did not ask: {c.model_dump_json()}")
        for ch in c.choices:
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                if tc.function is not None:
                    if tc.function.name:
                        names[tc.index] = names.get(tc.index, "") + tc.function.name
                    args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
    expect(names.get(0) == "get_weather", f"tool names by index: {names!r}")
    parsed = json.loads(args[0])
    expect(isinstance(parsed, dict) and "location" in parsed, f"arguments {args[0]!r}")
    expect(finish is not None, "no chunk has a finish_reason")


@check("tools non-stream: message.tool_calls[0] is get_weather")
def _():
    r = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        tool_choice="required",
    )
    calls = r.choices[0].message.tool_calls
    expect(calls, f"no tool_calls: {r.model_dump_json()}")
    expect(calls[0].function.name == "get_weather", f"tool call {calls[0]!r}")
    expect("location" in json.loads(calls[0].function.arguments), f"arguments {calls[0].function.arguments!r}")


@check("embeddings (SDK default base64 encoding): 2 float vectors", OPENAI_ONLY_CHECKS)
def _():
    raw = client.embeddings.with_raw_response.create(model=EMBED_MODEL, input=["a", "b"])
    sent = json.loads(raw.http_request.content)
    expect(sent.get("encoding_format") == "base64", f"the SDK sent {sent!r}")
    r = raw.parse()
    expect(len(r.data) == 2, f"{len(r.data)} vectors")
    for i, d in enumerate(r.data):
        expect(d.index == i, f"index {d.index} at position {i}")
        expect(len(d.embedding) > 0, f"vector {i} is empty")
        expect(all(isinstance(x, float) for x in d.embedding), f"vector {i} is not floats: {d.embedding[:4]!r}")
    expect(r.usage.prompt_tokens > 0, f"usage {r.usage!r}")


@check("legacy completions: text", OPENAI_ONLY_CHECKS)
def _():
    r = client.completions.create(model=LEGACY_MODEL, prompt="hi", max_tokens=5)
    expect(r.choices and r.choices[0].text, f"empty text: {r.model_dump_json()}")
    expect(r.usage is not None and r.usage.prompt_tokens > 0, f"usage {r.usage!r}")


@check("models.list contains the chat model")
def _():
    ids = [m.id for m in client.models.list()]
    expect(CHAT_MODEL in ids, f"models: {ids!r}")


@check("models.retrieve the chat model")
def _():
    m = client.models.retrieve(CHAT_MODEL)
    expect(m.id == CHAT_MODEL, f"model {m!r}")


@check("wrong key -> AuthenticationError (401)")
def _():
    try:
        make_client("sk-wrong").chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    except openai.AuthenticationError as e:
        expect(e.status_code == 401, f"status {e.status_code}")
    else:
        raise AssertionError("no error for api_key=sk-wrong")


@check("zero balance -> RateLimitError (429, insufficient_quota)")
def _():
    try:
        make_client(POOR_KEY).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    except openai.RateLimitError as e:
        expect(e.status_code == 429, f"status {e.status_code}")
        body_code = e.body.get("code") if isinstance(e.body, dict) else None
        expect(
            "insufficient_quota" in (e.code, body_code),
            f"code {e.code!r}, body {e.body!r}",
        )
    else:
        raise AssertionError("no error for a user with zero balance")


@check("unknown model -> NotFoundError (404)")
def _():
    try:
        client.chat.completions.create(model="no-such-model-xyz", messages=MESSAGES)
    except openai.NotFoundError as e:
        expect(e.status_code == 404, f"status {e.status_code}")
    else:
        raise AssertionError("no error for an unknown model")


@check("AsyncOpenAI: streamed chat")
def _():
    async def run():
        async with openai.AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=60) as ac:
            stream = await ac.chat.completions.create(
                model=CHAT_MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts, usage = [], None
            async for c in stream:
                if c.usage is not None:
                    usage = c.usage
                for ch in c.choices:
                    parts.append(ch.delta.content or "")
            return "".join(parts), usage

    text, usage = asyncio.run(run())
    expect(text != "", "the content deltas reassemble to an empty string")
    expect(usage is not None and usage.prompt_tokens > 0, f"usage {usage!r}")


client.close()
failed = [name for name, err in results if err is not None]
if failed:
    print(f"openai SDK {openai.__version__} [{CHAT_MODEL}]: {len(failed)} of {len(results)} checks FAILED: {', '.join(failed)}")
    sys.exit(1)
print(f"openai SDK {openai.__version__} [{CHAT_MODEL}]: {len(results)} checks passed")

#!/usr/bin/env python3
"""The gateway as the official `google-genai` Python SDK sees it.

Run by tests/it/python_sdk.rs against the real binary and the mock upstream,
in a venv made from requirements.txt beside this file, once per channel kind
(the gateway translates the Gemini API to whatever the channel speaks).
Environment:

  GAP_ROOT_URL   the gateway's root URL, e.g. http://127.0.0.1:PORT (the SDK
                 appends /{api_version}/models/{model}:generateContent)
  GAP_API_KEY    a key whose user has balance
  GAP_POOR_KEY   a key whose user has a zero balance
  GAP_MODEL      the model to ask for

Every check runs twice: with the SDK's default API version (only base_url
set, as a user would write it; `v1` in google-genai 3.x) and with
api_version="v1beta" set explicitly. The SDK sends the key as
`x-goog-api-key`.

Prints one line per check and exits non-zero if any check failed.
"""

import asyncio
import os
import sys
import traceback

from google import genai
from google.genai import errors, types

ROOT_URL = os.environ["GAP_ROOT_URL"]
API_KEY = os.environ["GAP_API_KEY"]
POOR_KEY = os.environ["GAP_POOR_KEY"]
MODEL = os.environ["GAP_MODEL"]

PROMPT = "Say hello to the SDK test."
WEATHER_TOOL = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="The current weather at a place.",
            parameters=types.Schema(
                type="OBJECT",
                properties={"location": types.Schema(type="STRING")},
                required=["location"],
            ),
        )
    ]
)
TOOL_CONFIG = types.GenerateContentConfig(
    tools=[WEATHER_TOOL],
    tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")),
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
)
TEXT_CONFIG = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=200)

results = []  # (name, error or None)


def http_options(api_version):
    if api_version is None:
        return types.HttpOptions(base_url=ROOT_URL, timeout=60_000)
    return types.HttpOptions(base_url=ROOT_URL, api_version=api_version, timeout=60_000)


def make_client(api_version, api_key=API_KEY):
    return genai.Client(api_key=api_key, http_options=http_options(api_version))


def describe(e):
    detail = f"{type(e).__name__}: {e}"
    if isinstance(e, errors.APIError):
        resp = getattr(e, "response", None)
        req = getattr(resp, "request", None)
        if req is not None:
            detail += f"\n    request: {req.method} {req.url}"
        text = getattr(resp, "text", None)
        if isinstance(text, str):
            detail += f"\n    response body: {text[:600]!r}"
    elif not isinstance(e, AssertionError):
        detail += "\n" + traceback.format_exc()
    return detail


def check(name):
    """Runs the decorated function at once for each API version and records the outcomes."""

    def run(fn):
        for version in (None, "v1beta"):
            label = f"[{MODEL} {version or 'default api_version'}] {name}"
            try:
                fn(version)
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
                detail = describe(e)
                print(f"FAIL {label}: {detail}", flush=True)
                results.append((label, detail))
            else:
                print(f"ok   {label}", flush=True)
                results.append((label, None))
        return fn

    return run


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def dump(r):
    return r.model_dump_json(exclude_none=True)


def expect_text_response(r):
    expect(r.text, f"no text: {dump(r)}")
    u = r.usage_metadata
    expect(u is not None and (u.prompt_token_count or 0) > 0, f"usage_metadata: {u!r}")
    expect((u.candidates_token_count or 0) > 0, f"usage_metadata: {u!r}")
    expect(r.candidates[0].finish_reason == types.FinishReason.STOP, f"finish_reason: {dump(r)}")


def expect_weather_call(calls, r):
    expect(calls, f"no function call: {r}")
    expect(calls[0].name == "get_weather", f"function call {calls[0]!r}")
    expect(isinstance(calls[0].args, dict) and "location" in calls[0].args, f"args {calls[0].args!r}")


@check("generate_content: text, usage_metadata, finish_reason STOP")
def _(version):
    with make_client(version) as c:
        r = c.models.generate_content(model=MODEL, contents=PROMPT, config=TEXT_CONFIG)
    expect_text_response(r)


@check("generate_content_stream: text, usage_metadata on the last chunk")
def _(version):
    with make_client(version) as c:
        chunks = list(c.models.generate_content_stream(model=MODEL, contents=PROMPT, config=TEXT_CONFIG))
    expect(chunks, "no chunks")
    text = "".join(ch.text or "" for ch in chunks)
    expect(text != "", "the chunks' text reassembles to an empty string")
    u = chunks[-1].usage_metadata
    expect(
        u is not None and (u.prompt_token_count or 0) > 0 and (u.candidates_token_count or 0) > 0,
        f"last chunk's usage_metadata {u!r}",
    )
    expect(
        any(ch.candidates and ch.candidates[0].finish_reason == types.FinishReason.STOP for ch in chunks),
        "no chunk has finish_reason STOP:\n      " + "\n      ".join(dump(ch) for ch in chunks),
    )


@check("function calling (mode ANY): function_calls[0] is get_weather")
def _(version):
    with make_client(version) as c:
        r = c.models.generate_content(model=MODEL, contents="Weather in Paris?", config=TOOL_CONFIG)
    expect_weather_call(r.function_calls, dump(r))
    expect((r.usage_metadata.prompt_token_count or 0) > 0, f"usage_metadata {r.usage_metadata!r}")


@check("function calling streamed (mode ANY): a get_weather call with args")
def _(version):
    with make_client(version) as c:
        chunks = list(c.models.generate_content_stream(model=MODEL, contents="Weather in Paris?", config=TOOL_CONFIG))
    calls = [fc for ch in chunks for fc in (ch.function_calls or [])]
    expect_weather_call(calls, "\n      ".join(dump(ch) for ch in chunks))


@check("function response round trip -> text")
def _(version):
    with make_client(version) as c:
        first = c.models.generate_content(model=MODEL, contents="Weather in Paris?", config=TOOL_CONFIG)
        call = first.function_calls[0]
        contents = [
            types.Content(role="user", parts=[types.Part(text="Weather in Paris?")]),
            first.candidates[0].content,
            types.Content(
                role="user",
                parts=[types.Part.from_function_response(name=call.name, response={"result": "18 C, sunny"})],
            ),
        ]
        r = c.models.generate_content(
            model=MODEL,
            contents=contents,
            config=types.GenerateContentConfig(
                tools=[WEATHER_TOOL],
                automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            ),
        )
    expect_text_response(r)


@check("models.list contains the model")
def _(version):
    with make_client(version) as c:
        names = [m.name for m in c.models.list()]
    expect(f"models/{MODEL}" in names, f"models: {names!r}")


@check("models.get the model")
def _(version):
    with make_client(version) as c:
        m = c.models.get(model=MODEL)
    expect(m.name == f"models/{MODEL}", f"model {dump(m)}")


@check("wrong key -> ClientError (4xx)")
def _(version):
    try:
        with make_client(version, "sk-wrong") as c:
            c.models.generate_content(model=MODEL, contents=PROMPT)
    except errors.ClientError as e:
        expect(e.code in (400, 401, 403), f"code {e.code}: {describe(e)}")
        expect(e.status in ("UNAUTHENTICATED", "INVALID_ARGUMENT", "PERMISSION_DENIED"), describe(e))
    else:
        raise AssertionError("no error for api_key=sk-wrong")


@check("zero balance -> ClientError (429 RESOURCE_EXHAUSTED)")
def _(version):
    try:
        with make_client(version, POOR_KEY) as c:
            c.models.generate_content(model=MODEL, contents=PROMPT)
    except errors.ClientError as e:
        expect(e.code == 429 and e.status == "RESOURCE_EXHAUSTED", describe(e))
    else:
        raise AssertionError("no error for a user with zero balance")


@check("unknown model -> ClientError (404 NOT_FOUND)")
def _(version):
    try:
        with make_client(version) as c:
            c.models.generate_content(model="no-such-model-xyz", contents=PROMPT)
    except errors.ClientError as e:
        expect(e.code == 404, describe(e))
    else:
        raise AssertionError("no error for an unknown model")


@check("client.aio: streamed text and usage")
def _(version):
    async def run():
        async with make_client(version).aio as ac:
            parts, usage = [], None
            async for ch in await ac.models.generate_content_stream(model=MODEL, contents=PROMPT, config=TEXT_CONFIG):
                parts.append(ch.text or "")
                usage = ch.usage_metadata or usage
            return "".join(parts), usage

    text, usage = asyncio.run(run())
    expect(text != "", "the chunks' text reassembles to an empty string")
    expect(usage is not None and (usage.prompt_token_count or 0) > 0, f"usage_metadata {usage!r}")


failed = [name for name, err in results if err is not None]
version = genai.__version__
if failed:
    print(f"google-genai SDK {version} [{MODEL}]: {len(failed)} of {len(results)} checks FAILED:")
    for name in failed:
        print(f"    {name}")
    sys.exit(1)
print(f"google-genai SDK {version} [{MODEL}]: {len(results)} checks passed")

"""Hostile input: one test per class of the fuzzing findings of issue 6, and property-based fuzzing (hypothesis)
of every HTTP endpoint with signed, mutated provider payloads: never a 5xx.

Classes: huge numbers (VK ``date``, ids), non-ASCII tokens, NUL and unpaired surrogates in texts (which reach
the message log), oversized texts (cut to the channel's limit), deep nesting, bad ``Content-Length`` and a
body trickled too slowly (408).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from _stack import FIXTURES, A, Stack, serve_app, stack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.web.server import create_app
from channels import web
from channels.base import MAX_TEXT
from channels.telegram import SECRET_HEADER, TelegramChannel
from channels.vk import VKChannel
from channels.whatsapp import SIGNATURE_HEADER, WhatsAppChannel
from tests.doubles.whatsapp import signature

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
async def s(services_env: dict[str, str]) -> AsyncIterator[Stack]:
    async with stack(services_env) as st:
        yield st


@pytest.fixture(scope="module")
async def http(s: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        yield client


def payload(channel: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / channel / f"{name}.json").read_text())
    return loaded


def signed(channel: str, body: bytes) -> dict[str, str]:
    """The credentials tenant A's provider would send with ``body`` (VK's are inside the body)."""
    if channel == "telegram":
        return {SECRET_HEADER: A.tg_secret}
    if channel == "whatsapp":
        return {SIGNATURE_HEADER: signature(body, A.wa_app_secret)}
    return {}


async def post(s: Stack, http: httpx.AsyncClient, channel: str, doc: Any) -> httpx.Response:
    body = json.dumps(doc).encode()
    return await http.post(f"/webhooks/{channel}/{s.a}", content=body, headers=signed(channel, body))


def _vk(doc: dict[str, Any]) -> dict[str, Any]:
    return doc | {"group_id": A.vk_group, "secret": A.vk_secret}


# --- one test per class ------------------------------------------------------------------------------------------


async def test_huge_numbers_give_no_overflow(s: Stack, http: httpx.AsyncClient) -> None:
    vk = payload("vk", "text")
    vk["object"]["message"]["date"] = 10**30
    answer = await post(s, http, "vk", vk)
    assert (answer.status_code, answer.text) == (200, "ok")
    parsed = VKChannel(s.settings.tenants[s.a].channels.vk).parse(s.a, json.dumps(vk).encode())  # type: ignore[arg-type]
    assert parsed.messages[0].sent_at is None
    wa = payload("whatsapp", "text")
    wa["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(-(10**40))
    assert (await post(s, http, "whatsapp", wa)).status_code == 200
    for huge in (10**300, -(10**300), 2**64):
        tg = payload("telegram", "text")
        tg["message"]["from"]["id"] = huge
        assert (await post(s, http, "telegram", tg)).status_code == 400
        vk = payload("vk", "text")
        vk["object"]["message"]["from_id"] = huge
        assert (await post(s, http, "vk", vk)).status_code == 400
    await s.idle()


async def test_a_non_ascii_chat_token_is_401(s: Stack, http: httpx.AsyncClient) -> None:
    for token in ("токен".encode(), b"\xff\xfe", "t\u00e9".encode("latin-1")):
        headers = {"X-Chat-Token": token}
        answer = await http.get(f"/chat/{s.a}/messages", params={"user_id": "u1", "wait": "0"}, headers=headers)
        assert answer.status_code == 401, answer.text
        body = json.dumps({"user_id": "u1", "text": "hi"})
        answer = await http.post(f"/chat/{s.a}/messages", content=body, headers=headers)
        assert answer.status_code == 401, answer.text


async def test_a_nul_reaches_the_log_cleaned(s: Stack, http: httpx.AsyncClient) -> None:
    """(Unpaired surrogates never get this far: every parser's JSON reader refuses them, a 400.)"""
    log = s.services.runtime.log
    user = 777000111
    tg = payload("telegram", "text")
    tg["update_id"] = 900777001
    tg["message"]["from"]["id"] = tg["message"]["chat"]["id"] = user
    tg["message"]["text"] = "hello\x00 there"
    assert (await post(s, http, "telegram", tg)).status_code == 200
    await s.idle()
    await log.flush()
    rows = await log.conversation(s.a, f"telegram:{user}")
    assert [r.text for r in rows if r.direction == "in"] == ["hello there"]
    assert any(r.direction == "out" for r in rows)
    assert log.writing and log.backlog == 0


def test_texts_over_the_channel_limit_are_cut(s: Stack) -> None:
    """A 1 MB text is cut to the channel's limit as it is parsed: the dialog never sees more (its extractors
    take seconds on a megabyte, milliseconds on 4096 characters)."""
    megabyte = "tomorrow at 5 " * 75_000
    channels = s.settings.tenants[s.a].channels
    tg = payload("telegram", "text")
    tg["message"]["text"] = megabyte
    wa = payload("whatsapp", "text")
    wa["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = megabyte
    vk = payload("vk", "text")
    vk["object"]["message"]["text"] = megabyte
    parsers = [
        (TelegramChannel(channels.telegram).parse, tg),  # type: ignore[arg-type]
        (WhatsAppChannel(channels.whatsapp).parse, wa),  # type: ignore[arg-type]
        (VKChannel(channels.vk).parse, vk),  # type: ignore[arg-type]
        (web.parse, payload("web", "text") | {"text": megabyte}),
    ]
    for parse, doc in parsers:
        started = time.perf_counter()
        (msg,) = parse(s.a, json.dumps(doc).encode()).messages
        assert msg.text == megabyte[:MAX_TEXT], parse
        assert time.perf_counter() - started < 5  # a generous bound on a loaded machine; the point is the cut


async def test_deep_nesting_is_a_400_or_ignored(s: Stack, http: httpx.AsyncClient) -> None:
    deep = "[" * 3000 + "]" * 3000
    for channel, doc in (
        ("telegram", payload("telegram", "text") | {"extra": "DEEP"}),
        ("whatsapp", payload("whatsapp", "text") | {"extra": "DEEP"}),
        ("vk", _vk(payload("vk", "text") | {"object": {"message": "DEEP"}})),
    ):
        body = json.dumps(doc).replace('"DEEP"', deep).encode()
        answer = await http.post(f"/webhooks/{channel}/{s.a}", content=body, headers=signed(channel, body))
        assert answer.status_code == 400, (channel, answer.text)
    button = payload("vk", "button")
    button["object"]["message"]["payload"] = "[" * 5000 + "]" * 5000  # a payload string VK would never send
    assert (await post(s, http, "vk", button)).status_code == 200
    await s.idle()


async def _raw(url: str, head: bytes, body_parts: Iterator[bytes] | None = None, every: float = 0.0) -> int:
    """Send a raw HTTP/1.1 request (``body_parts`` spaced ``every`` seconds apart); the response's status."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        writer.write(head)
        await writer.drain()
        reply = asyncio.ensure_future(reader.readline())
        for part in body_parts or ():
            if reply.done():
                break
            await asyncio.wait({reply}, timeout=every)
            if not reply.done():
                writer.write(part)
                await writer.drain()
        status_line = await asyncio.wait_for(reply, 30)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_bad_content_length_is_a_4xx(s: Stack) -> None:
    path = f"/webhooks/telegram/{s.a}"
    for declared in ("²".encode("latin-1"), b"9" * 40, b"-1", b"1e3"):
        head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + declared + b"\r\n\r\n"
        status = await _raw(s.url, head)
        assert 400 <= status < 500, (declared, status)


async def test_a_trickled_body_is_cut_off_with_408(s: Stack) -> None:
    app = create_app(s.settings, services=s.services, body_timeout_s=1.0)
    server, task, url = await serve_app(app)
    try:
        path = f"/webhooks/telegram/{s.a}".encode()
        head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        started = time.perf_counter()
        status = await _raw(url, head, iter([b"{"] * 1000), every=0.2)
        assert status == 408
        assert time.perf_counter() - started < 10
        # a body sent at once still goes through the same app
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/health")).status_code == 200
            vk = payload("vk", "confirmation")
            assert (await client.post(f"/webhooks/vk/{s.a}", json=vk)).text == A.vk_confirmation
    finally:
        server.should_exit = True
        await task


async def test_vk_confirmation_without_a_secret_is_answered(s: Stack, http: httpx.AsyncClient) -> None:
    confirmation = payload("vk", "confirmation")
    del confirmation["secret"]
    answer = await http.post(f"/webhooks/vk/{s.a}", json=confirmation)
    assert (answer.status_code, answer.text) == (200, A.vk_confirmation)
    wrong = await http.post(f"/webhooks/vk/{s.a}", json=confirmation | {"secret": "not-it"})
    other = await http.post(f"/webhooks/vk/{s.a}", json=confirmation | {"group_id": 1})
    assert (wrong.status_code, other.status_code) == (403, 403)
    text = payload("vk", "text")  # other events still need the secret
    del text["secret"]
    assert (await http.post(f"/webhooks/vk/{s.a}", json=text)).status_code == 403


# --- property-based: signed, mutated payloads at every endpoint ---------------------------------------------------

HOSTILE = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\ud800",
        "\u202e",
        "٣",
        "x" * 5000,
        "9" * 5000,
        10**4000,
        -(2**63) - 1,
        2**64,
        10**30,
        1e308,
        -0.0,
        float("inf"),
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    ]
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**31, max_value=10**40)
    | st.floats()
    | st.text(max_size=40)
    | HOSTILE
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


def _replaced(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return doc


def _fixtures(channel: str) -> list[Any]:
    return [json.loads(f.read_text()) for f in sorted((FIXTURES / channel).glob("*.json"))]


@st.composite
def mutated(draw: st.DrawFn, channel: str) -> bytes:
    """A real payload of ``channel`` with one to three values (or whole subtrees) replaced; mostly signed."""
    doc = draw(st.sampled_from(_fixtures(channel)))
    for _ in range(draw(st.integers(1, 3))):
        doc = _replaced(doc, draw(st.sampled_from(list(_paths(doc)))), draw(VALUES))
    if channel == "vk" and isinstance(doc, dict) and draw(st.booleans()):
        doc = _vk(doc)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")  # an unpaired surrogate becomes bytes no UTF-8 decoder takes


def bodies(channel: str) -> st.SearchStrategy[bytes]:
    return mutated(channel) | st.binary(max_size=300)


async def _no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.method, str(response.request.url)[:200], response.text)


@pytest.mark.parametrize("channel", ["telegram", "whatsapp", "vk"])
@FUZZ
@given(body=st.data())
async def test_fuzzed_webhooks_never_give_a_5xx(
    s: Stack, http: httpx.AsyncClient, channel: str, body: st.DataObject
) -> None:
    raw = body.draw(bodies(channel))
    wrong = {SECRET_HEADER: "é".encode(), SIGNATURE_HEADER: "sha256=é".encode()}  # non-ASCII credentials
    headers = signed(channel, raw) if body.draw(st.integers(0, 9)) else wrong
    await _no_5xx(await http.post(f"/webhooks/{channel}/{s.a}", content=raw, headers=headers))  # type: ignore[arg-type]


@FUZZ
@given(body=st.data())
async def test_fuzzed_web_chat_posts_never_give_a_5xx(s: Stack, http: httpx.AsyncClient, body: st.DataObject) -> None:
    raw = body.draw(bodies("web"))
    headers = await s.chat_auth(s.a, "web-5f3a9c") if body.draw(st.booleans()) else {}
    await _no_5xx(await http.post(f"/chat/{s.a}/messages", content=raw, headers=headers))


QUERY = st.dictionaries(
    st.sampled_from(["user_id", "after", "wait", "hub.mode", "hub.challenge", "hub.verify_token", "x"]),
    st.text(max_size=30) | st.sampled_from(["0", "-1", "1e309", "nan", "inf", "9" * 5000, "subscribe", A.wa_verify]),
    max_size=4,
)


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# any byte an HTTP client lets into a header value (no controls), non-ASCII included
TOKEN = st.lists(st.sampled_from([*range(0x21, 0x7F), *range(0x80, 0x100)]), max_size=80).map(bytes)


@FUZZ
@given(query=QUERY, tenant=st.text(min_size=1, max_size=30), which=st.integers(0, 5), token=TOKEN)
async def test_fuzzed_gets_never_give_a_5xx(
    s: Stack, http: httpx.AsyncClient, query: dict[str, str], tenant: str, which: int, token: bytes
) -> None:
    name = s.a if which % 2 else quote(tenant, safe="")
    path = [
        f"/chat/{name}/messages",
        f"/webhooks/whatsapp/{name}",
        f"/chat/{name}",
        "/health",
        "/health/ready",
        "/metrics",
    ][which]
    if _seconds(query.setdefault("wait", "0")) is not None:
        query["wait"] = "0"  # a valid wait: no long polls (invalid ones stay, for their 400)
    await _no_5xx(await http.get(path, params=query, headers={"X-Chat-Token": token}))  # type: ignore[dict-item]


async def test_after_the_fuzzing_every_drain_ends_and_the_log_writer_lives(s: Stack) -> None:
    await s.idle()
    log = s.services.runtime.log
    await log.flush()
    assert log.writing and log.backlog == 0

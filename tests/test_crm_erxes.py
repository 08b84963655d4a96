"""The erxes client against the erxes double, both profiles: operations, the Date quirk, every error's mapping."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from doubles.erxes import ErxesDouble

from bot.crm.erxes import CustomerFields, ErxesClient, map_error
from bot.exceptions import (
    CrmAuthFailed,
    CrmDuplicate,
    CrmPermissionDenied,
    CrmRejected,
    CrmUnavailable,
)
from bot.settings import ErxesConfig

TOKEN = "app-token-1"
START = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)


@pytest.fixture(params=["v1", "v3"])
async def erxes(request: pytest.FixtureRequest) -> AsyncIterator[ErxesDouble]:
    async with ErxesDouble(request.param, TOKEN) as double:
        yield double


def _client(double: ErxesDouble, token: str = TOKEN) -> ErxesClient:
    config = ErxesConfig(url=double.url, profile=double.profile, token=token, deal_stage_id="stage-1")
    return ErxesClient(config)


async def test_customer_is_found_by_code_then_phone_and_a_duplicate_is_reported(erxes: ErxesDouble) -> None:
    client = _client(erxes)
    fields = CustomerFields(code="telegram:42", name="John Smith", phone="+447700900123")
    assert await client.find_customer(fields.code, fields.phone) is None
    created = await client.add_customer(fields)
    assert erxes.customers[created]["firstName"] == "John" and erxes.customers[created]["lastName"] == "Smith"
    assert await client.find_customer("telegram:42", None) == created
    assert await client.find_customer("web:other", "+447700900123") == created  # by phone ("+" escaped on v3)
    with pytest.raises(CrmDuplicate) as duplicate:
        await client.add_customer(CustomerFields(code="vk:7", phone="+447700900123"))
    assert duplicate.value.field == "phone"
    with pytest.raises(CrmDuplicate) as same_code:
        await client.add_customer(fields)
    assert same_code.value.field in ("phone", "code")
    await client.edit_customer(created, CustomerFields(code="telegram:42", name="Jon", email="jon@example.com"))
    assert erxes.customers[created]["primaryEmail"] == "jon@example.com"
    assert len(erxes.customers) == 1
    await client.aclose()


async def test_deal_dates_travel_as_variables(erxes: ErxesDouble) -> None:
    client = _client(erxes)
    customer = await client.add_customer(CustomerFields(code="web:1", name="Ann"))
    deal = await client.add_deal("Haircut - Ann [bb:x1]", "stage-1", customer, START, START + timedelta(hours=1), "d")
    stored = erxes.deals[deal]
    assert (stored["startDate"], stored["closeDate"]) == (START, START + timedelta(hours=1))
    assert stored["customerIds"] == [customer]
    assert await client.find_deal("stage-1", "[bb:x1]") == deal
    later = START + timedelta(days=1)
    await client.edit_deal(deal, "Haircut - Ann [bb:x1]", "stage-1", later, later + timedelta(hours=1), "moved")
    assert erxes.deals[deal]["startDate"] == later
    # The quirk the client avoids: an inline string literal reaches erxes as null.
    await client.call(
        f'mutation {{ dealsEdit(_id: "{deal}", name: "n", startDate: "2026-12-01T10:00:00+00:00") {{ _id }} }}'
    )
    assert erxes.deals[deal]["startDate"] == later  # null is "no change": the date sent inline was lost
    await client.aclose()


async def test_tags_notes_and_messenger(erxes: ErxesDouble) -> None:
    client = _client(erxes)
    customer = await client.add_customer(CustomerFields(code="web:2", name="Bo"))
    tag = await client.find_or_add_tag("bookingbot: handoff")
    assert await client.find_or_add_tag("bookingbot: handoff") == tag
    await client.tag_customer(customer, [tag])
    assert await client.customer_tags(customer) == [tag]
    note = await client.add_note(customer, "call them")
    assert erxes.notes[-1]["_id"] == note and erxes.notes[-1]["contentTypeId"] == customer
    config = ErxesConfig(url=erxes.url, profile=erxes.profile, token=TOKEN, inbox_integration_id="integration-1",
                         brand_code="brand-1")
    mirror = ErxesClient(config)
    visitor = await mirror.messenger_connect("web:2", None, None)
    assert visitor == customer
    conversation, _ = await mirror.insert_message(visitor, None, "hello")
    again, _ = await mirror.insert_message(visitor, conversation, "[bot] hi")
    assert again == conversation and [m["content"] for m in erxes.messages] == ["hello", "[bot] hi"]
    await client.aclose()
    await mirror.aclose()


async def test_errors_map_to_our_tree(erxes: ErxesDouble) -> None:
    bad = _client(erxes, token="wrong")
    with pytest.raises(CrmAuthFailed):  # v1: 200 + "Login required"; v3: HTTP 401
        await bad.find_customer("web:1", None)
    await bad.aclose()
    client = _client(erxes)
    erxes.deny("customersAdd")
    with pytest.raises(CrmPermissionDenied):
        await client.add_customer(CustomerFields(code="web:3"))
    with pytest.raises(CrmRejected):  # HTTP 400 GRAPHQL_VALIDATION_FAILED
        await client.call("query { noSuchField }")
    erxes.fail_next(1, status=502)
    with pytest.raises(CrmUnavailable):
        await client.find_customer("web:3", None)
    erxes.outage = True
    with pytest.raises(CrmUnavailable):
        await client.find_customer("web:3", None)
    await client.aclose()


async def test_unreachable_is_unavailable() -> None:


    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = ErxesClient(ErxesConfig(url=f"http://127.0.0.1:{port}", profile="v3", token=TOKEN))
    with pytest.raises(CrmUnavailable):
        await client.find_customer("web:1", None)
    await client.aclose()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"data": {"x": None}, "errors": [{"message": "Duplicated code"}]}, CrmDuplicate),
        (200, {"data": {"x": None}, "errors": [{"message": "Login required"}]}, CrmAuthFailed),
        (200, {"data": {"x": None}, "errors": [{"message": "Permission required"}]}, CrmPermissionDenied),
        (200, {"data": {"x": None}, "errors": [{"message": "Stage not found"}]}, CrmRejected),
        (400, {"errors": [{"message": "x", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}, CrmRejected),
        (401, None, CrmAuthFailed),
        (401, {"error": "Invalid app token"}, CrmAuthFailed),
        (503, None, CrmUnavailable),
        (200, None, CrmUnavailable),
    ],
)
def test_map_error(status: int, body: object, expected: type[Exception]) -> None:
    assert isinstance(map_error(status, body), expected)
    if isinstance(body, dict) and "error" in body:  # the gateway's reason reaches the operator
        assert "Invalid app token" in str(map_error(status, body))
    assert map_error(200, {"data": {"x": {"_id": "1"}}}) is None


async def test_a_refused_token_is_reported_as_erxes_reports_it(erxes: ErxesDouble) -> None:
    bad = _client(erxes, token="revoked")
    with pytest.raises(CrmAuthFailed) as refused:
        await bad.add_note("cus1", "x")
    # v3: the gateway's 401 {"error": "Invalid app token"}; v1: the resolver's "Login required"
    assert ("Invalid app token" if erxes.profile == "v3" else "Login required") in str(refused.value)
    if erxes.profile == "v1":  # the messenger's widgets are public: a bad token does not stop them
        config = ErxesConfig(url=erxes.url, profile="v1", token="revoked", inbox_integration_id="integration-1",
                             brand_code="brand-1")
        mirror = ErxesClient(config)
        assert await mirror.messenger_connect("web:9", None, None)
        await mirror.aclose()
    await bad.aclose()


async def test_notes_and_mirrored_messages_can_be_read_back(erxes: ErxesDouble) -> None:
    config = ErxesConfig(url=erxes.url, profile=erxes.profile, token=TOKEN, inbox_integration_id="integration-1",
                         brand_code="brand-1")
    client = ErxesClient(config)
    customer = await client.add_customer(CustomerFields(code="web:4", name="Cy"))
    assert await client.find_note(customer, "[bb:note-1]") is None
    note = await client.add_note(customer, "call them [bb:note-1]")
    assert await client.find_note(customer, "[bb:note-1]") == note
    assert await client.find_note(customer, "[bb:note-2]") is None
    visitor = await client.messenger_connect("web:4", None, None)
    assert await client.latest_message(visitor, None) is None
    conversation, first = await client.insert_message(visitor, None, "hello")
    latest = await client.latest_message(visitor, None)
    assert latest is not None and (latest.conversation, latest.id, latest.text) == (conversation, first, "hello")
    _, second = await client.insert_message(visitor, conversation, "[bot] hi")
    latest = await client.latest_message(visitor, conversation)
    assert latest is not None and (latest.id, latest.text) == (second, "[bot] hi")
    await client.aclose()

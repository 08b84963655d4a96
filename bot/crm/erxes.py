"""The erxes GraphQL client: both profiles, one error mapper, and the operations the CRM outbox needs.

Profiles (researched from erxes/erxes, tags 1.17.7, 3.0.0-3.0.91 and master/main):
    ``v1`` erxes 1.x/2.x: a wrong or expired app token (a JWT) is not an HTTP error: the gateway drops it and
    every resolver behind a login answers "Login required"; ``customers`` is a list (Elasticsearch, eventually
    consistent, so it is only the last resort); ``customerDetail(_id)`` also matches ``code``; tags of type
    ``contacts:customer``; the messenger is reached by ``brandCode``.
    ``v3`` erxes 3.x: the app token (``sk_...``, Settings -> Apps) is checked by the gateway: a wrong or revoked
    one is HTTP 401 ``{"error": "Invalid app token"}`` (no GraphQL body); ``customers`` returns
    ``{list, pageInfo, totalCount}`` and its ``searchValue`` is a regular expression (we escape it); tags of type
    ``core:customer``; the messenger is reached by ``integrationId``.

Both: ``POST {url}/gateway/graphql`` with the header ``erxes-app-token`` (3.x reads ``Authorization: Bearer`` as
a user's login session, not an app token); business errors are HTTP 200 with ``errors[].message`` and a null
field; ``widgets*`` operations are public (no login); the ``Date`` scalar drops inline string literals, so every
date travels as a variable (ISO 8601 text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from bot.exceptions import (
    CrmAuthFailed,
    CrmDuplicate,
    CrmError,
    CrmPermissionDenied,
    CrmRejected,
    CrmUnavailable,
)
from bot.settings import ErxesConfig

_DUPLICATED = re.compile(r"^Duplicated (\w+)", re.IGNORECASE)
_AUTH = ("login required", "unauthorized", "invalid token", "token expired")


def map_error(status: int, body: Any) -> CrmError | None:
    """The one mapping of an erxes answer (HTTP status + decoded JSON body, or None) to our exceptions.

    ``None``: the answer is a success (its ``data`` may be used).
    """
    errors = body.get("errors") if isinstance(body, dict) else None
    message = _first_message(errors) or _gateway_message(body) or f"HTTP {status}"
    if status == 401 or status == 403:
        return CrmAuthFailed(f"erxes refused the token: {message}")
    if status == 429 or status >= 500:
        return CrmUnavailable(f"erxes answered HTTP {status}: {message}")
    if status == 400:
        return CrmRejected(f"erxes rejected the request: {message}")
    if status != 200 or not isinstance(body, dict):
        return CrmUnavailable(f"erxes answered HTTP {status} with no GraphQL body")
    if not errors:
        return None if isinstance(body.get("data"), dict) else CrmUnavailable("erxes answered without data")
    lowered = message.lower()
    duplicated = _DUPLICATED.match(message)
    if duplicated:
        return CrmDuplicate(message, duplicated.group(1).lower())
    if any(marker in lowered for marker in _AUTH):
        return CrmAuthFailed(f"erxes: {message}")
    if "permission required" in lowered:
        return CrmPermissionDenied(f"erxes: {message}")
    code = _first_code(errors)
    if code in ("GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED", "BAD_USER_INPUT"):
        return CrmRejected(f"erxes rejected the request: {message}")
    if code == "UNAUTHENTICATED":
        return CrmAuthFailed(f"erxes: {message}")
    return CrmRejected(f"erxes: {message}")


def _first_message(errors: Any) -> str | None:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message") or "") or None
    return None


def _gateway_message(body: Any) -> str | None:
    """The ``{"error": ...}`` text erxes's gateway answers before GraphQL runs (3.x: "Invalid app token")."""
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) and error else None


def _first_code(errors: Any) -> str | None:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        extensions = errors[0].get("extensions")
        if isinstance(extensions, dict) and isinstance(extensions.get("code"), str):
            return str(extensions["code"])
    return None


@dataclass(frozen=True)
class Message:
    """A conversation message as the messenger widget reads it back."""

    conversation: str
    id: str
    text: str


@dataclass(frozen=True)
class CustomerFields:
    code: str  # our stable key of the channel identity, e.g. "telegram:123"
    name: str | None = None
    phone: str | None = None
    email: str | None = None

    def variables(self) -> dict[str, Any]:
        first, _, last = (self.name or "").strip().partition(" ")
        fields: dict[str, Any] = {"code": self.code}
        if first:
            fields |= {"firstName": first, "lastName": last.strip() or None}
        if self.phone:
            fields |= {"primaryPhone": self.phone, "phones": [self.phone]}
        if self.email:
            fields |= {"primaryEmail": self.email, "emails": [self.email]}
        return fields


_CUSTOMER_ARGS = (
    "$code: String, $firstName: String, $lastName: String, $primaryPhone: String, $phones: [String], "
    "$primaryEmail: String, $emails: [String]"
)
_CUSTOMER_PARAMS = (
    "code: $code, firstName: $firstName, lastName: $lastName, primaryPhone: $primaryPhone, phones: $phones, "
    "primaryEmail: $primaryEmail, emails: $emails"
)
_DEAL_ARGS = "$name: String!, $stageId: String, $startDate: Date, $closeDate: Date, $description: String"
_DEAL_PARAMS = "name: $name, stageId: $stageId, startDate: $startDate, closeDate: $closeDate, description: $description"


class ErxesClient:
    """One tenant's erxes. Every method raises a :class:`~bot.exceptions.CrmError` on failure."""

    def __init__(self, config: ErxesConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        self.v1 = config.profile == "v1"
        headers = {"Content-Type": "application/json", "erxes-app-token": config.token}
        self._http = httpx.AsyncClient(
            base_url=config.url.rstrip("/"), headers=headers, timeout=timeout, trust_env=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one GraphQL operation; its ``data`` object, or the mapped error."""
        try:
            response = await self._http.post("/gateway/graphql", json={"query": query, "variables": variables or {}})
        except httpx.HTTPError as exc:
            raise CrmUnavailable(f"erxes unreachable: {exc!r}") from exc
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        error = map_error(response.status_code, body)
        if error is not None:
            raise error
        data: dict[str, Any] = body["data"]
        return data

    # -- customers -------------------------------------------------------------------------------------------

    async def find_customer(self, code: str, phone: str | None) -> str | None:
        """The id of the customer with our ``code``, else the one with ``phone``, else None."""
        if self.v1:
            data = await self.call("query($_id: String!) { customerDetail(_id: $_id) { _id } }", {"_id": code})
            found = data.get("customerDetail")
            if isinstance(found, dict):
                return str(found["_id"])
        for value in (code, phone):
            if value:
                found_id = await self._search_customer(value)
                if found_id is not None:
                    return found_id
        return None

    async def _search_customer(self, value: str) -> str | None:
        if self.v1:
            data = await self.call("query($s: String) { customers(searchValue: $s, perPage: 5) { _id } }", {"s": value})
            items = data.get("customers") or []
        else:
            data = await self.call(
                "query($s: String) { customers(searchValue: $s, perPage: 5) { list { _id } totalCount } }",
                {"s": re.escape(value)},
            )
            items = (data.get("customers") or {}).get("list") or []
        return str(items[0]["_id"]) if items else None

    async def add_customer(self, fields: CustomerFields) -> str:
        """Create a customer; raises :class:`CrmDuplicate` when the code or phone is taken (find it instead)."""
        query = (
            f"mutation({_CUSTOMER_ARGS}, $state: String) "
            f"{{ customersAdd({_CUSTOMER_PARAMS}, state: $state) {{ _id }} }}"
        )
        data = await self.call(query, {**fields.variables(), "state": "customer"})
        return self._id(data, "customersAdd")

    async def edit_customer(self, customer_id: str, fields: CustomerFields) -> None:
        query = (
            f"mutation($_id: String!, {_CUSTOMER_ARGS}) {{ customersEdit(_id: $_id, {_CUSTOMER_PARAMS}) {{ _id }} }}"
        )
        self._id(await self.call(query, {"_id": customer_id, **fields.variables()}), "customersEdit")

    async def customer_tags(self, customer_id: str) -> list[str]:
        query = "query($_id: String!) { customerDetail(_id: $_id) { _id tagIds } }"
        data = await self.call(query, {"_id": customer_id})
        found = data.get("customerDetail") or {}
        return [str(t) for t in found.get("tagIds") or []]

    async def tag_customer(self, customer_id: str, tag_ids: list[str]) -> None:
        """Set the customer's tags: erxes replaces the whole set, so callers send every tag it must keep."""
        kind = self._customer_type
        await self.call(
            "mutation($type: String!, $targetIds: [String!]!, $tagIds: [String!]!) "
            "{ tagsTag(type: $type, targetIds: $targetIds, tagIds: $tagIds) }",
            {"type": kind, "targetIds": [customer_id], "tagIds": tag_ids},
        )

    async def find_or_add_tag(self, name: str) -> str:
        kind = self._customer_type
        data = await self.call(
            "query($type: String, $s: String) { tags(type: $type, searchValue: $s) { _id name } }",
            {"type": kind, "s": name},
        )
        for tag in data.get("tags") or []:
            if tag.get("name") == name:
                return str(tag["_id"])
        data = await self.call(
            "mutation($name: String!, $type: String!) { tagsAdd(name: $name, type: $type) { _id } }",
            {"name": name, "type": kind},
        )
        return self._id(data, "tagsAdd")

    async def add_note(self, customer_id: str, content: str) -> str:
        data = await self.call(
            "mutation($contentType: String!, $contentTypeId: String, $content: String) "
            "{ internalNotesAdd(contentType: $contentType, contentTypeId: $contentTypeId, content: $content) { _id } }",
            {"contentType": self._customer_type, "contentTypeId": customer_id, "content": content},
        )
        return self._id(data, "internalNotesAdd")

    async def find_note(self, customer_id: str, search: str) -> str | None:
        """A note on the customer whose text contains ``search`` (our reference): finds a note that a previous
        attempt made although its answer was lost."""
        data = await self.call(
            "query($contentType: String!, $contentTypeId: String) "
            "{ internalNotes(contentType: $contentType, contentTypeId: $contentTypeId) { _id content } }",
            {"contentType": self._customer_type, "contentTypeId": customer_id},
        )
        for note in data.get("internalNotes") or []:
            if search in str(note.get("content") or ""):
                return str(note["_id"])
        return None

    @property
    def _customer_type(self) -> str:
        """What erxes calls a customer in tags and notes."""
        return "contacts:customer" if self.v1 else "core:customer"

    # -- deals -----------------------------------------------------------------------------------------------

    async def add_deal(
        self, name: str, stage_id: str, customer_id: str, start: datetime, end: datetime, description: str
    ) -> str:
        query = (
            f"mutation({_DEAL_ARGS}, $customerIds: [String]) "
            f"{{ dealsAdd({_DEAL_PARAMS}, customerIds: $customerIds) {{ _id }} }}"
        )
        variables = _deal_variables(name, stage_id, start, end, description) | {"customerIds": [customer_id]}
        return self._id(await self.call(query, variables), "dealsAdd")

    async def edit_deal(
        self, deal_id: str, name: str, stage_id: str, start: datetime, end: datetime, description: str
    ) -> None:
        query = f"mutation($_id: String!, {_DEAL_ARGS}) {{ dealsEdit(_id: $_id, {_DEAL_PARAMS}) {{ _id }} }}"
        variables = _deal_variables(name, stage_id, start, end, description) | {"_id": deal_id}
        self._id(await self.call(query, variables), "dealsEdit")

    async def find_deal(self, stage_id: str, search: str) -> str | None:
        """A deal in ``stage_id`` whose name contains ``search`` (our booking reference): finds a deal that a
        previous attempt created although its answer was lost."""
        data = await self.call(
            "query($stageId: String, $search: String) { deals(stageId: $stageId, search: $search) { _id name } }",
            {"stageId": stage_id, "search": search},
        )
        for deal in data.get("deals") or []:
            if search in str(deal.get("name", "")):
                return str(deal["_id"])
        return None

    # -- messenger (the inbox mirror) ------------------------------------------------------------------------

    async def messenger_connect(self, code: str, phone: str | None, email: str | None) -> str:
        """Connect a messenger visitor for our ``code``; returns the erxes customer id it is bound to."""
        if self.v1:  # erxes 1.x finds the messenger by its brand; 3.x by the integration
            target, arg, param = {"brandCode": self.config.brand_code}, "$brandCode: String!", "brandCode: $brandCode"
        else:
            target = {"integrationId": self.config.inbox_integration_id}
            arg, param = "$integrationId: String!", "integrationId: $integrationId"
        data = await self.call(
            f"mutation({arg}, $phone: String, $email: String, $code: String) "
            f"{{ widgetsMessengerConnect({param}, phone: $phone, email: $email, code: $code) "
            "{ integrationId customerId } }",
            target | {"phone": phone, "email": email, "code": code},
        )
        connected = data.get("widgetsMessengerConnect") or {}
        if not connected.get("customerId"):
            raise CrmRejected("erxes: widgetsMessengerConnect returned no customer")
        return str(connected["customerId"])

    async def insert_message(self, customer_id: str, conversation_id: str | None, text: str) -> tuple[str, str]:
        """Add a message to the integration; returns (conversation id, message id)."""
        data = await self.call(
            "mutation($integrationId: String!, $customerId: String, $conversationId: String, $message: String, "
            "$contentType: String) { widgetsInsertMessage(integrationId: $integrationId, customerId: $customerId, "
            "conversationId: $conversationId, message: $message, contentType: $contentType) { _id conversationId } }",
            {"integrationId": self.config.inbox_integration_id, "customerId": customer_id,
             "conversationId": conversation_id, "message": text, "contentType": "text"},
        )
        inserted = data.get("widgetsInsertMessage") or {}
        if not inserted.get("_id"):
            raise CrmRejected("erxes: widgetsInsertMessage returned no message")
        return str(inserted["conversationId"]), str(inserted["_id"])

    async def latest_message(self, customer_id: str, conversation_id: str | None) -> Message | None:
        """The customer's latest message in ``conversation_id``, else in their most recently updated conversation
        of the integration; None when there is none."""
        if conversation_id is None:
            data = await self.call(
                "query($integrationId: String!, $customerId: String) "
                "{ widgetsConversations(integrationId: $integrationId, customerId: $customerId) { _id } }",
                {"integrationId": self.config.inbox_integration_id, "customerId": customer_id},
            )
            conversations = data.get("widgetsConversations") or []  # erxes sorts them by updatedAt, newest first
            if not conversations:
                return None
            conversation_id = str(conversations[0]["_id"])
        data = await self.call(
            "query($conversationId: String) { widgetsMessages(conversationId: $conversationId) "
            "{ _id customerId content } }",
            {"conversationId": conversation_id},
        )
        mine = [m for m in data.get("widgetsMessages") or [] if m.get("customerId") == customer_id]  # oldest first
        if not mine:
            return None
        return Message(conversation_id, str(mine[-1]["_id"]), str(mine[-1].get("content") or ""))

    @staticmethod
    def _id(data: dict[str, Any], field: str) -> str:
        value = data.get(field)
        if not isinstance(value, dict) or not value.get("_id"):
            raise CrmRejected(f"erxes: {field} returned nothing")
        return str(value["_id"])


def _deal_variables(name: str, stage_id: str, start: datetime, end: datetime, description: str) -> dict[str, Any]:
    # Dates as variables only: erxes's Date scalar turns an inline string literal into null.
    return {"name": name, "stageId": stage_id, "startDate": start.isoformat(), "closeDate": end.isoformat(),
            "description": description}

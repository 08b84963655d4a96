"""erxes double: a real GraphQL server (graphql-core) at ``POST /gateway/graphql`` with the v1 or v3 profile.

The contract, as read in erxes/erxes (tags 1.17.7, 3.0.0-3.0.91, master, main):
    - Both: the app token travels in the header ``erxes-app-token``. Without one that the gateway accepts,
      every resolver behind a login answers ``Login required`` (HTTP 200, ``errors`` + ``data.<field>: null``;
      ``checkLogin`` in api-utils / erxes-api-shared), while the messenger's ``widgets*`` operations are public
      and still work. ``Authorization: Bearer`` is a user's login session in 3.x, not an app token: a token
      sent there authenticates nothing.
    - v1 (erxes 1.x/2.x): a wrong or expired app token (a JWT) is dropped by the gateway, so it is "Login
      required" as above. ``customers`` is a list; ``customerDetail(_id)`` matches ``_id`` or ``code``; custom
      fields are ``customFieldsData``; tags of customers have type ``contacts:customer``;
      ``widgetsMessengerConnect`` takes a ``brandCode``.
    - v3 (erxes 3.x): the gateway looks the app token up (``Apps.findOne({token, status: 'active'})``): a wrong
      or revoked one is HTTP 401 ``{"error": "Invalid app token"}``, before GraphQL. ``customers`` returns
      ``{list, pageInfo, totalCount}`` and its ``searchValue`` is a regular expression (an unescaped ``+``
      is an error, as in MongoDB); custom fields are ``propertiesData``; tag type ``core:customer``;
      ``widgetsMessengerConnect`` takes an ``integrationId``.
    - Both: ``internalNotes(contentType, contentTypeId)`` lists a record's notes, oldest first;
      ``widgetsConversations(integrationId, customerId)`` lists a customer's conversations, last updated first;
      ``widgetsMessages(conversationId)`` lists a conversation's messages, oldest first.
    - Both: business errors are HTTP 200 with ``errors[].message`` ("Duplicated phone", "Duplicated code",
      "Duplicated email", "Permission required") and the field null; a query that does not parse or validate
      is HTTP 400 with ``extensions.code`` ``GRAPHQL_PARSE_FAILED`` / ``GRAPHQL_VALIDATION_FAILED``. The
      ``Date`` scalar reads variables (ISO text or epoch milliseconds) but turns an inline string literal
      into null, as erxes's ``parseLiteral`` does.

Test controls: ``fail_next(n, status=...)`` answers the next calls with that HTTP status; ``outage = True``
answers every call 503 (the gateway up, erxes behind it down) until set back; ``lose_next_answers(n)`` runs the
next n mutations (of ``field`` only, if given) but answers 504 (the work done, the answer lost); ``deny(field)``
makes a field answer "Permission required"; setting ``token`` revokes the app token the bot has.
Run standalone: ``python -m tests.doubles.erxes --profile v3 --token T --port 3300``.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from graphql import (
    GraphQLError,
    GraphQLScalarType,
    GraphQLSchema,
    IntValueNode,
    OperationType,
    build_schema,
    execute,
    parse,
    validate,
)

from . import Double, cli, serve

Profile = Literal["v1", "v3"]

_CUSTOMER_FIELDS = """
    state: String, firstName: String, lastName: String, middleName: String, primaryPhone: String,
    phones: [String], primaryEmail: String, emails: [String], code: String, description: String
"""


def _sdl(profile: Profile) -> str:
    custom = "customFieldsData: JSON" if profile == "v1" else "propertiesData: JSON"
    customers = "[Customer]" if profile == "v1" else "CustomersListResponse"
    messenger = "brandCode: String!" if profile == "v1" else "integrationId: String!"
    deal_name = "String!" if profile == "v1" else "String"
    return f"""
    scalar Date
    scalar JSON
    type Customer {{
      _id: String! code: String state: String firstName: String lastName: String middleName: String
      primaryPhone: String phones: [String] primaryEmail: String emails: [String] description: String
      tagIds: [String] {custom} createdAt: Date
    }}
    type CustomersListResponse {{ list: [Customer] pageInfo: JSON totalCount: Int }}
    type Deal {{
      _id: String! name: String! stageId: String customerIds: [String] startDate: Date closeDate: Date
      description: String tagIds: [String]
    }}
    type Tag {{ _id: String! name: String type: String }}
    type InternalNote {{ _id: String! contentType: String! contentTypeId: String content: String }}
    type MessengerConnectResponse {{ integrationId: String customerId: String visitorId: String }}
    type ConversationMessage {{ _id: String! conversationId: String content: String customerId: String }}
    type Conversation {{ _id: String! content: String integrationId: String customerId: String }}
    type Query {{
      customerDetail(_id: String!): Customer
      customers(searchValue: String, page: Int, perPage: Int, ids: [String]): {customers}
      deals(stageId: String, search: String, customerIds: [String]): [Deal]
      tags(type: String, searchValue: String): [Tag]
      internalNotes(contentType: String!, contentTypeId: String): [InternalNote]
      widgetsConversations(integrationId: String!, customerId: String, visitorId: String): [Conversation]
      widgetsMessages(conversationId: String): [ConversationMessage]
    }}
    type Mutation {{
      customersAdd({_CUSTOMER_FIELDS}, {custom}): Customer
      customersEdit(_id: String!, {_CUSTOMER_FIELDS}, {custom}): Customer
      dealsAdd(name: {deal_name}, stageId: String, customerIds: [String], startDate: Date, closeDate: Date,
               description: String, tagIds: [String]): Deal
      dealsEdit(_id: String!, name: {deal_name}, stageId: String, customerIds: [String], startDate: Date,
                closeDate: Date, description: String, tagIds: [String]): Deal
      tagsAdd(name: String!, type: String!, colorCode: String): Tag
      tagsTag(type: String!, targetIds: [String!]!, tagIds: [String!]!): JSON
      internalNotesAdd(contentType: String!, contentTypeId: String, content: String, mentionedUserIds: [String]):
        InternalNote
      widgetsMessengerConnect({messenger}, email: String, phone: String, code: String, isUser: Boolean):
        MessengerConnectResponse
      widgetsInsertMessage(integrationId: String!, customerId: String, visitorId: String, conversationId: String,
                           message: String, contentType: String, attachments: [JSON]): ConversationMessage
    }}
    """


def _parse_date(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    raise GraphQLError(f"Date cannot represent value: {value!r}")


def _serialize_date(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _date_literal(node: Any, _variables: Any = None) -> datetime | None:
    # erxes: `if (ast.kind === Kind.INT) return new Date(parseInt(ast.value)); return null;`
    return datetime.fromtimestamp(int(node.value) / 1000, UTC) if isinstance(node, IntValueNode) else None


def _schema(profile: Profile) -> GraphQLSchema:
    schema = build_schema(_sdl(profile))
    date = schema.type_map["Date"]
    assert isinstance(date, GraphQLScalarType)
    # graphql-core 3.2 calls serialize / parse_value; 3.3 coerce_output_value / coerce_input_value.
    for name, function in (
        ("serialize", _serialize_date),
        ("coerce_output_value", _serialize_date),
        ("parse_value", _parse_date),
        ("coerce_input_value", _parse_date),
        ("parse_literal", _date_literal),
    ):
        setattr(date, name, function)
    return schema


class ErxesDouble(Double):
    def __init__(
        self,
        profile: Profile,
        token: str,
        *,
        stage_ids: tuple[str, ...] = ("stage-1",),
        integration_id: str = "integration-1",
        brand_code: str = "brand-1",
    ) -> None:
        super().__init__()
        self.profile = profile
        self.token = token
        self.stage_ids = set(stage_ids)
        self.integration_id = integration_id
        self.brand_code = brand_code
        self.customers: dict[str, dict[str, Any]] = {}
        self.deals: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, dict[str, Any]] = {}
        self.notes: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []  # widgetsInsertMessage, in order
        self.conversations: dict[str, dict[str, Any]] = {}  # in order of their last message (oldest first)
        self.outage = False
        self._lose: Counter[str | None] = Counter()  # mutation field (None: any) -> answers still to lose
        self._denied: set[str] = set()
        self._ids = itertools.count(1)
        self._schema = _schema(profile)
        self._resolvers: dict[str, Callable[..., Any]] = {
            "customerDetail": self._customer_detail,
            "customers": self._customers,
            "deals": self._deals,
            "tags": self._tags,
            "internalNotes": self._notes,
            "widgetsConversations": self._widgets_conversations,
            "widgetsMessages": self._widgets_messages,
            "customersAdd": self._customers_add,
            "customersEdit": self._customers_edit,
            "dealsAdd": self._deals_add,
            "dealsEdit": self._deals_edit,
            "tagsAdd": self._tags_add,
            "tagsTag": self._tags_tag,
            "internalNotesAdd": self._notes_add,
            "widgetsMessengerConnect": self._messenger_connect,
            "widgetsInsertMessage": self._insert_message,
        }
        self.app.router.add_post("/gateway/graphql", self._handle)

    # -- controls ----------------------------------------------------------------------------------------------

    def lose_next_answers(self, n: int = 1, *, field: str | None = None) -> None:
        """Run the next ``n`` mutations (of ``field`` only, if given) but answer 504, as a gateway whose upstream
        timed out after the work."""
        self._lose[field] += n

    def deny(self, field: str) -> None:
        self._denied.add(field)

    def reset(self) -> None:
        super().reset()
        self.customers.clear()
        self.deals.clear()
        self.tags.clear()
        self.notes.clear()
        self.messages.clear()
        self.conversations.clear()
        self.outage = False
        self._lose.clear()
        self._denied.clear()

    # -- HTTP ----------------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        params = body if isinstance(body, dict) else {}
        call = self._record(request, str(params.get("query", ""))[:60], params)
        failure = self._take_failure()
        status = 503 if self.outage else failure.status if failure else None
        if status:
            call.status = status
            return web.Response(status=status, text=f"{status} from the erxes double")
        app_token = request.headers.get("erxes-app-token")
        if self.profile == "v3" and app_token and app_token != self.token:
            call.status = 401
            return web.json_response({"error": "Invalid app token"}, status=401)
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            call.status = 400
            return _errors(400, "POST body must be JSON with a query", "BAD_REQUEST")
        answer = self._run(body["query"], body.get("variables") or {}, app_token == self.token)
        call.status = answer.status
        return answer

    def _run(self, query: str, variables: dict[str, Any], logged_in: bool) -> web.Response:
        try:
            document = parse(query)
        except GraphQLError as exc:
            return _errors(400, exc.message, "GRAPHQL_PARSE_FAILED")
        problems = validate(self._schema, document)
        if problems:
            return _errors(400, problems[0].message, "GRAPHQL_VALIDATION_FAILED")
        mutations = [
            field.name.value
            for d in document.definitions
            if getattr(d, "operation", None) is OperationType.MUTATION
            for field in d.selection_set.selections  # type: ignore[attr-defined]
        ]
        result = execute(
            self._schema, document, variable_values=variables, field_resolver=self._field(logged_in)
        )
        assert not hasattr(result, "__await__")
        body: dict[str, Any] = {"data": result.data}  # type: ignore[union-attr]
        if result.errors:  # type: ignore[union-attr]
            body["errors"] = [
                {"message": e.message, "path": e.path, "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
                for e in result.errors  # type: ignore[union-attr]
            ]
        if mutations and self._take_lost(mutations):
            return web.Response(status=504, text="504 Gateway Time-out")
        return web.json_response(body)

    def _take_lost(self, mutations: list[str]) -> bool:
        for key in (*mutations, None):
            if self._lose[key] > 0:
                self._lose[key] -= 1
                return True
        return False

    def _field(self, logged_in: bool) -> Callable[..., Any]:
        def resolve(source: Any, info: Any, **args: Any) -> Any:
            if source is not None:  # a field of an object we returned
                return source.get(info.field_name) if isinstance(source, dict) else None
            name = info.field_name
            if not logged_in and not name.startswith("widgets"):  # the messenger's API is public
                raise GraphQLError("Login required")
            if name in self._denied:
                raise GraphQLError("Permission required")
            return self._resolvers[name](**args)

        return resolve

    # -- customers -----------------------------------------------------------------------------------------------

    def _customer_detail(self, _id: str) -> dict[str, Any] | None:
        found = self.customers.get(_id)
        if found is None and self.profile == "v1":  # 1.x: `Customers.findOne({$or: [{_id}, {code: _id}]})`
            found = next((c for c in self.customers.values() if c.get("code") == _id), None)
        return found

    def _customers(self, searchValue: str | None = None, perPage: int | None = None, **_: Any) -> Any:
        items = list(self.customers.values())
        if searchValue:
            if self.profile == "v3":
                try:
                    pattern = re.compile(searchValue, re.IGNORECASE)
                except re.error as exc:
                    raise GraphQLError(f"Regular expression is invalid: {exc}") from exc
                items = [c for c in items if any(pattern.search(v) for v in _searchable(c))]
            else:
                items = [c for c in items if any(searchValue.lower() in v.lower() for v in _searchable(c))]
        items = items[: perPage or 20]
        if self.profile == "v1":
            return items
        return {"list": items, "totalCount": len(items), "pageInfo": {}}

    def _check_unique(self, doc: dict[str, Any], own_id: str | None = None) -> None:
        for field, word in (("primaryEmail", "email"), ("primaryPhone", "phone"), ("code", "code")):
            value = doc.get(field)
            if value and any(c.get(field) == value and cid != own_id for cid, c in self.customers.items()):
                raise GraphQLError(f"Duplicated {word}")

    def _customers_add(self, **doc: Any) -> dict[str, Any]:
        self._check_unique(doc)
        customer_id = f"cus{next(self._ids)}"
        self.customers[customer_id] = {
            "_id": customer_id, "tagIds": [], "createdAt": datetime.now(UTC), "state": "lead", **doc
        }
        return self.customers[customer_id]

    def _customers_edit(self, _id: str, **doc: Any) -> dict[str, Any]:
        customer = self.customers.get(_id)
        if customer is None:
            raise GraphQLError("Customer not found")
        self._check_unique(doc, own_id=_id)
        customer.update({k: v for k, v in doc.items() if v is not None})
        return customer

    # -- deals, tags, notes --------------------------------------------------------------------------------------

    def _deals(self, stageId: str | None = None, search: str | None = None, **_: Any) -> list[dict[str, Any]]:
        deals = [d for d in self.deals.values() if stageId is None or d["stageId"] == stageId]
        return [d for d in deals if not search or search.lower() in d["name"].lower()]

    def _deals_add(self, **doc: Any) -> dict[str, Any]:
        if not doc.get("name"):
            raise GraphQLError("Name is required")
        if doc.get("stageId") not in self.stage_ids:
            raise GraphQLError("Stage not found")
        deal_id = f"deal{next(self._ids)}"
        self.deals[deal_id] = {"_id": deal_id, "customerIds": [], "tagIds": [], **doc}
        return self.deals[deal_id]

    def _deals_edit(self, _id: str, **doc: Any) -> dict[str, Any]:
        deal = self.deals.get(_id)
        if deal is None:
            raise GraphQLError("Deal not found")
        deal.update({k: v for k, v in doc.items() if v is not None})
        return deal

    def _tag_type(self) -> str:
        return "contacts:customer" if self.profile == "v1" else "core:customer"

    def _tags(self, type: str | None = None, searchValue: str | None = None) -> list[dict[str, Any]]:
        tags = [t for t in self.tags.values() if type is None or t["type"] == type]
        return [t for t in tags if not searchValue or searchValue.lower() in t["name"].lower()]

    def _tags_add(self, name: str, type: str, colorCode: str | None = None) -> dict[str, Any]:
        if any(t["name"] == name and t["type"] == type for t in self.tags.values()):
            raise GraphQLError("Tag duplicated")
        tag_id = f"tag{next(self._ids)}"
        self.tags[tag_id] = {"_id": tag_id, "name": name, "type": type}
        return self.tags[tag_id]

    def _tags_tag(self, type: str, targetIds: list[str], tagIds: list[str]) -> Any:
        if type != self._tag_type():
            raise GraphQLError(f"Unknown tag type {type}")
        for target in targetIds:
            if target not in self.customers:
                raise GraphQLError("Customer not found")
            self.customers[target]["tagIds"] = list(tagIds)  # erxes replaces the target's tags
        return {"n": len(targetIds), "ok": 1}

    def _notes_add(self, contentType: str, contentTypeId: str | None = None, content: str | None = None,
                   **_: Any) -> dict[str, Any]:
        if contentType == self._tag_type() and contentTypeId not in self.customers:
            raise GraphQLError("Customer not found")
        note = {"_id": f"note{next(self._ids)}", "contentType": contentType, "contentTypeId": contentTypeId,
                "content": content}
        self.notes.append(note)
        return note

    def _notes(self, contentType: str, contentTypeId: str | None = None) -> list[dict[str, Any]]:
        return [n for n in self.notes if n["contentType"] == contentType and n["contentTypeId"] == contentTypeId]

    # -- messenger -----------------------------------------------------------------------------------------------

    def _messenger_connect(self, code: str | None = None, phone: str | None = None, email: str | None = None,
                           brandCode: str | None = None, integrationId: str | None = None,
                           **_: Any) -> dict[str, Any]:
        if (brandCode or integrationId) not in (self.brand_code, self.integration_id):
            raise GraphQLError("Integration not found")
        customer = next((c for c in self.customers.values() if code and c.get("code") == code), None)
        if customer is None:
            customer = self._customers_add(code=code, primaryPhone=phone, primaryEmail=email)
            customer["state"] = "visitor"
        return {"integrationId": self.integration_id, "customerId": customer["_id"]}

    def _insert_message(self, integrationId: str, customerId: str | None = None,
                        conversationId: str | None = None, message: str | None = None, **_: Any) -> dict[str, Any]:
        if integrationId != self.integration_id:
            raise GraphQLError("Integration not found")
        conversation = conversationId or f"conv{next(self._ids)}"
        entry = {"_id": f"msg{next(self._ids)}", "conversationId": conversation, "content": message,
                 "customerId": customerId}
        self.messages.append(entry)
        self.conversations.pop(conversation, None)  # moved to the end: updated last
        self.conversations[conversation] = {"_id": conversation, "content": message, "integrationId": integrationId,
                                            "customerId": customerId}
        return entry

    def _widgets_conversations(self, integrationId: str, customerId: str | None = None,
                               visitorId: str | None = None) -> list[dict[str, Any]]:
        found = [c for c in self.conversations.values() if c["integrationId"] == integrationId]
        return [c for c in reversed(found) if c["customerId"] == customerId]

    def _widgets_messages(self, conversationId: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["conversationId"] == conversationId]


def _searchable(customer: dict[str, Any]) -> list[str]:
    fields = ("firstName", "lastName", "primaryEmail", "primaryPhone", "code")
    values = [str(customer[f]) for f in fields if customer.get(f)]
    return values + [str(v) for v in (customer.get("phones") or []) + (customer.get("emails") or []) if v]


def _errors(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"errors": [{"message": message, "extensions": {"code": code}}]}, status=status)


if __name__ == "__main__":
    parser = cli(__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["v1", "v3"], default="v3")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    serve(ErxesDouble(args.profile, args.token), args.port)

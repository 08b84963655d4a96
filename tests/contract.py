"""Check requests against cal.com's published OpenAPI spec (``tests/contracts/``, copied from the contract).

For every request: the path and method exist; every required header and query parameter is present and no
query parameter is unknown; the JSON body validates against the operation's request schema (one branch of a
``oneOf`` - the spec's "Option 1/2/3" bodies overlap, so "exactly one" would refuse valid bodies), with
``additionalProperties: false`` added to every object schema, because cal.com refuses unknown keys (400).
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parent / "contracts" / "calcom-openapi-v2-subset.json"
_URN = "urn:calcom-v2"


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def _spec() -> tuple[dict[str, Any], Registry]:
    spec = _strict(json.loads(SPEC.read_text(encoding="utf-8")))
    return spec, Registry().with_resource(_URN, Resource.from_contents(spec, default_specification=DRAFT202012))


def _operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    spec, _ = _spec()
    for template, ops in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            return template, ops[method.lower()]
    raise AssertionError(f"{method} {path} is not in the published spec")


def problems(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any) -> list[str]:
    """What is wrong with one request (empty when it follows the spec)."""
    template, op = _operation(method, path)
    where = f"{method} {template}"
    found: list[str] = []
    lowered = {k.lower() for k in headers}
    params = op.get("parameters", [])
    for param in params:
        name = param["name"]
        if param["in"] == "header" and param.get("required") and name.lower() not in lowered:
            found.append(f"{where}: missing required header {name}")
        if param["in"] == "query" and param.get("required") and name not in query:
            found.append(f"{where}: missing required query parameter {name}")
    known = {p["name"] for p in params if p["in"] == "query"}
    found += [f"{where}: unknown query parameter {q}" for q in sorted(set(query) - known)]
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        if body not in (None, {}):
            found.append(f"{where}: has a body, the spec has none")
        return found
    branches = schema.get("oneOf", [schema])
    errors = [_errors(branch, body) for branch in branches]
    if all(errors):
        found.append(f"{where}: body matches no request schema: {min(errors, key=len)}")
    return found


def _errors(schema: dict[str, Any], body: Any) -> list[str]:
    _, registry = _spec()
    resolved = copy.deepcopy(schema)
    if "$ref" in resolved:
        resolved = {"$ref": _URN + resolved["$ref"]}
    validator = Draft202012Validator(_rebase(resolved), registry=registry)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


def _rebase(node: Any) -> Any:
    """Refs like ``#/components/...`` inside an inline schema point into the spec document."""
    if isinstance(node, dict):
        return {k: (_URN + v if k == "$ref" and v.startswith("#") else _rebase(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node

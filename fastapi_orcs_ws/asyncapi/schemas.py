"""Pydantic's JSON Schemas, turned into AsyncAPI 3.0 Schema Objects.

Pydantic writes JSON Schema 2020-12 with OpenAPI's ``discriminator`` object. An AsyncAPI
3.0 Schema Object is a superset of JSON Schema Draft 07 whose ``discriminator`` is a
string (AsyncAPI 3.0.0, "Schema Object"), so `payload_schemas` rewrites:

- ``discriminator: {"propertyName": p, "mapping": ...}`` -> ``discriminator: p`` (the
  ``oneOf`` branches still pin the tag with ``const``, so nothing is lost for validation);
- ``prefixItems`` (tuples) -> Draft 07's array form of ``items``, with ``additionalItems``;
- ``$ref`` next to other keywords (ignored beside ``$ref`` in Draft 07) -> ``allOf: [$ref]``;
- ``dependentRequired`` / ``dependentSchemas`` -> Draft 07's ``dependencies``;
- ``$defs`` -> ``components/schemas`` (every model once, referenced by name; recursive and
  generic models included: pydantic names ``Page[Item]`` ``Page_Item_``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from pydantic.errors import PydanticInvalidForJsonSchema, PydanticSchemaGenerationError

__all__ = ["NO_TYPE", "SCHEMA_REF", "payload_schemas", "to_asyncapi_schema"]

logger = logging.getLogger("fastapi_orcs_ws.asyncapi")

SCHEMA_REF = "#/components/schemas/{model}"
NO_TYPE = object()
"""Sentinel for "no annotation": the schema says "any JSON value"."""

Schema = dict[str, Any]

# Keywords whose value is a schema, a list of schemas, or a map of name -> schema. Anything
# else (const, enum, default, examples...) is data and is copied untouched.
_ONE = frozenset(
    {"items", "additionalItems", "additionalProperties", "not", "if", "then", "else"}
    | {"contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties"}
)
_MANY = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def to_asyncapi_schema(schema: Any) -> Any:
    """``schema`` (JSON Schema 2020-12, as pydantic writes it) as an AsyncAPI 3.0 Schema
    Object (Draft 07 superset). Returns a new object; ``schema`` is not changed.

    Example:
        ```python
        to_asyncapi_schema({"oneOf": [...], "discriminator": {"propertyName": "kind"}})
        # {"oneOf": [...], "discriminator": "kind"}
        ```
    """
    if isinstance(schema, list):
        return [to_asyncapi_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema  # booleans are schemas too
    out: Schema = {}
    for key, value in schema.items():
        if key in _ONE:
            out[key] = to_asyncapi_schema(value)
        elif key in _MANY and isinstance(value, list):
            out[key] = [to_asyncapi_schema(item) for item in value]
        elif key in _MAP and isinstance(value, dict):
            out[key] = {name: to_asyncapi_schema(item) for name, item in value.items()}
        else:
            out[key] = value
    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict):
        out["discriminator"] = str(discriminator.get("propertyName", ""))
        if not out["discriminator"]:
            del out["discriminator"]
    if "prefixItems" in out:
        prefix = out.pop("prefixItems")
        rest = out.pop("items", None)
        out["items"] = prefix
        if rest is not None:  # tuple[int, *tuple[str, ...]]: the rest of the items
            out["additionalItems"] = rest
    dependencies: Schema = {}
    dependencies.update(out.pop("dependentRequired", None) or {})
    dependencies.update(out.pop("dependentSchemas", None) or {})
    if dependencies:
        out["dependencies"] = {**out.get("dependencies", {}), **dependencies}
    if "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out["allOf"] = [{"$ref": ref}, *out.get("allOf", [])]
    return out


def payload_schemas(items: Iterable[tuple[int, str, Any]]) -> tuple[dict[int, Schema], Schema]:
    """The schema of every ``(key, mode, payload type)``, and the shared definitions.

    ``mode`` is ``"validation"`` (what a client may send) or ``"serialization"`` (what the
    server writes: aliases, computed fields). Models used by several payloads are defined
    once in the returned definitions (for ``components/schemas``) and referenced.
    """
    inputs = []
    fixed: dict[int, Schema] = {}
    for key, mode, payload_type in items:
        if payload_type is NO_TYPE:
            fixed[key] = {"description": "Any JSON value."}
            continue
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(payload_type)
            adapter.json_schema(mode=mode)  # type: ignore[arg-type]
        except (PydanticInvalidForJsonSchema, PydanticSchemaGenerationError) as exc:
            # Validated at run time, but pydantic has no JSON Schema for it: say so.
            logger.warning(
                "AsyncAPI: no JSON Schema for %s (%s); it is documented as any JSON value",
                _type_name(payload_type),
                exc,
            )
            fixed[key] = {"description": f"Any JSON value ({_type_name(payload_type)})."}
            continue
        inputs.append((key, mode, adapter))
    mapping, top = TypeAdapter.json_schemas(inputs, ref_template=SCHEMA_REF)  # type: ignore[arg-type]
    schemas = {key: to_asyncapi_schema(schema) for (key, _), schema in mapping.items()}
    schemas.update(fixed)
    definitions = {name: to_asyncapi_schema(s) for name, s in top.get("$defs", {}).items()}
    return schemas, definitions


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)

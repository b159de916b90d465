"""Example values generated from JSON Schemas, for the generated docs."""

from __future__ import annotations

from typing import Any

__all__ = ["example_for"]

Schema = dict[str, Any]

_STRING_FORMATS = {
    "date-time": "2024-01-01T12:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "duration": "PT1M",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}


def example_for(schema: Schema, definitions: Schema | None = None, _depth: int = 0) -> Any:
    """A plausible value for ``schema``: its examples, defaults, consts or a typed filler.

    ``$ref`` pointers to ``#/components/schemas/...`` are looked up in ``definitions``.

    Example:
        ```python
        example_for({"type": "object", "properties": {"room": {"type": "string"}}})
        # {"room": "string"}
        ```
    """
    definitions = definitions or {}
    if _depth > 8 or not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = definitions.get(ref.rsplit("/", 1)[-1], {})
        return example_for(
            {**target, **{k: v for k, v in schema.items() if k != "$ref"}}, definitions, _depth + 1
        )
    for key in ("examples", "example"):
        if key in schema:
            value = schema[key]
            return value[0] if key == "examples" and isinstance(value, list) and value else value
    if "const" in schema:
        return schema["const"]
    # An optional field's `None` default says less than an example of its real type.
    if "default" in schema and not (schema["default"] is None and "anyOf" in schema):
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key, []) if o.get("type") != "null"] or schema.get(key)
        if options:
            return example_for(options[0], definitions, _depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = example_for(part, definitions, _depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        properties = schema.get("properties", {})
        value = {
            name: example_for(sub, definitions, _depth + 1) for name, sub in properties.items()
        }
        extra = schema.get("additionalProperties")
        if not value and isinstance(extra, dict):
            value["key"] = example_for(extra, definitions, _depth + 1)
        return value
    if kind == "array":
        items = schema.get("items", {})
        count = max(1, int(schema.get("minItems", 1)))
        if "prefixItems" in schema:
            return [example_for(s, definitions, _depth + 1) for s in schema["prefixItems"]]
        return [example_for(items, definitions, _depth + 1) for _ in range(min(count, 3))]
    if kind == "string":
        return _string_example(schema)
    if kind in ("integer", "number"):
        return _number_example(schema, kind)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return None


def _string_example(schema: Schema) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _STRING_FORMATS:
        return _STRING_FORMATS[fmt]
    text = "string"
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if isinstance(high, int):
        text = text[:high]
    return text


def _number_example(schema: Schema, kind: str) -> int | float:
    value: float = 0
    if "minimum" in schema:
        value = schema["minimum"]
    elif "exclusiveMinimum" in schema:
        value = schema["exclusiveMinimum"] + 1
    elif "maximum" in schema:
        value = min(0, schema["maximum"])
    elif "exclusiveMaximum" in schema:
        value = min(0, schema["exclusiveMaximum"] - 1)
    return int(value) if kind == "integer" else float(value)

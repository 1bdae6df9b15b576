"""The spec's JSON Schema for editors (``gridsweep schema``).

Pydantic describes a parameter as the list it is normalized to; a spec may also write
a scalar or the W&B forms ``{value: x}`` / ``{values: [...]}``, so each parameter's
schema is widened to those four spellings. ``seeds`` may be one seed, ``metric`` a name.
"""

from __future__ import annotations

from typing import Any

from app.spec import SweepSpec

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _axis(prop: dict[str, Any]) -> dict[str, Any]:
    item = prop["items"]
    grid = {"type": "array", "items": item, "minItems": prop.get("minItems", 1)}
    return {
        "title": prop.get("title"),
        "description": "a value (fixed), a list of values (a grid axis), {value: x} or {values: [...]}",
        "default": prop.get("default"),
        "anyOf": [
            item,
            grid,
            {
                "type": "object",
                "properties": {"value": item},
                "required": ["value"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"values": grid},
                "required": ["values"],
                "additionalProperties": False,
            },
        ],
    }


def spec_json_schema() -> dict[str, Any]:
    schema = SweepSpec.model_json_schema(mode="validation")
    params = schema["$defs"]["Parameters"]["properties"]
    for name, prop in list(params.items()):
        params[name] = _axis(prop)
    props = schema["properties"]
    seeds = props["seeds"]
    props["seeds"] = {
        "title": seeds.get("title"),
        "default": seeds.get("default"),
        "anyOf": [seeds["items"], seeds],
    }
    names = schema["$defs"]["MetricSpec"]["properties"]["name"]
    metric = props["metric"]
    props["metric"] = {
        "default": metric.get("default"),
        "anyOf": [{k: v for k, v in names.items() if k != "default"}, metric],
    }
    return {"$schema": DIALECT, **schema, "title": "gridsweep sweep spec"}

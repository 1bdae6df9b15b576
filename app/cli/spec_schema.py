"""The spec's JSON Schema for editors (``gridsweep schema``).

Pydantic describes a parameter as the list it is normalized to; a spec may also write
a scalar or the W&B forms ``{value: x}`` / ``{values: [...]}``, so each parameter's
schema is widened to those four spellings (and a distribution ``{min, max, distribution}``
where one is allowed); ``parameters`` may also be a list of sub-grids; ``seeds`` may be one
seed, ``metric`` a name.
"""

from __future__ import annotations

from typing import Any

from app.search_spec import RANGES
from app.spec import SweepSpec

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _range(name: str) -> list[dict[str, Any]]:
    schema = RANGES[name].model_json_schema()
    schema.pop("title", None)
    return [schema]


def _axis(name: str, prop: dict[str, Any]) -> dict[str, Any]:
    item = prop["items"]
    grid = {"type": "array", "items": item, "minItems": prop.get("minItems", 1)}
    forms = "a value (fixed), a list of values (a grid axis), {value: x} or {values: [...]}"
    if name in RANGES:
        forms += ", or a distribution {min, max, distribution} (methods random, tpe, qmc)"
    return {
        "title": prop.get("title"),
        "description": forms,
        "default": prop.get("default"),
        "anyOf": [
            *(_range(name) if name in RANGES else []),
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
        params[name] = _axis(name, prop)
    # One grid (an object: its keywords apply) or a list of sub-grids (an array: `items` applies),
    # in one schema so that a bad grid's errors name their keys.
    grid = schema["$defs"]["Parameters"]
    schema["properties"]["parameters"] = {
        **{k: v for k, v in grid.items() if k not in ("type", "title", "description")},
        "description": "one grid, or a list of sub-grids (their union, each config once)",
        "type": ["object", "array"],
        "items": {"$ref": "#/$defs/Parameters"},
        "minItems": 1,
        "default": schema["properties"]["parameters"].get("default"),
    }
    props = schema["properties"]
    seeds = props["seeds"]
    props["seeds"] = {
        "title": seeds.get("title"),
        "default": seeds.get("default"),
        "anyOf": [seeds["items"], seeds],
    }
    names = dict(schema["$defs"]["MetricSpec"]["properties"]["name"])
    # The name alone is a string (null in the mapping means the task's default).
    names = next((b for b in names.get("anyOf", []) if b.get("type") == "string"), names)
    metric = props["metric"]
    props["metric"] = {
        "default": metric.get("default"),
        "description": "default by task: val_rmse (regression), val_error (classification; ties "
        "broken by val_log_loss)",
        "anyOf": [{k: v for k, v in names.items() if k != "default"}, metric],
    }
    return {"$schema": DIALECT, **schema, "title": "gridsweep sweep spec"}

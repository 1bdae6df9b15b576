"""Validation errors in plain words, each with its field path.

Pydantic speaks of itself ("Extra inputs are not permitted", "Input should be a valid
dictionary or instance of MetricSpec", a union's branches in the path). ``plain_errors``
rewrites its errors for people: an unknown key gets a did-you-mean and the allowed keys,
a value outside a fixed set lists the allowed values (no Python syntax), a scalar written
where a grid axis takes a list is reported at the scalar's own path, and each branch of
a union is folded into one message. The API's 422s and the command line both use it.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

# Errors about the type of a value: dropped for a union branch when another branch says more.
TYPE_ERRORS = {
    "int_type",
    "int_parsing",
    "int_from_float",
    "float_type",
    "float_parsing",
    "list_type",
    "dict_type",
    "model_type",
    "string_type",
    "bool_type",
    "bool_parsing",
}
_UNION_TAG = re.compile(r"[\[\]\-]|^(int|float|str|bool|list|dict|tuple|none)$")


def show(value: Any) -> str:
    """A value as a spec writes it: text quoted, numbers and lists as JSON (shortened)."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def did_you_mean(word: Any, choices: Sequence[str]) -> str | None:
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _unwrap(tp: Any) -> Any:
    """The model class inside ``Annotated[...]``, ``X | None`` or ``list[X]``, else None."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
            return models[0] if models else None
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def model_at(root: type[BaseModel] | None, path: Sequence[Any]) -> type[BaseModel] | None:
    """The model whose fields are at ``path`` (keys and indexes) under ``root``."""
    model = root
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _unwrap(field.annotation) if field is not None else None
    return model


def _scalar_path(loc: list[Any], body: Any) -> list[Any]:
    """``loc`` with the index of a list a scalar was turned into dropped (``batch_size[0]`` for
    ``batch_size: 0`` is ``batch_size``); an index into ``{values: [...]}`` stays."""
    out: list[Any] = []
    node = body
    for part in loc:
        if isinstance(part, int):
            if isinstance(node, Mapping) and isinstance(node.get("values"), list):
                node = node["values"]
            if not isinstance(node, list):
                node = node.get("value") if isinstance(node, Mapping) else node
                continue  # a scalar (or {value: x}) stands for a list of one
            node = node[part] if 0 <= part < len(node) else None
        else:
            node = node.get(part) if isinstance(node, Mapping) else None
        out.append(part)
    return out


def _bound(ctx: Mapping[str, Any], key: str) -> str:
    v = ctx.get(key)
    return f"{v:g}" if isinstance(v, float) else show(v)


def plain_message(e: Mapping[str, Any], root: type[BaseModel] | None, path: list[Any]) -> str:
    """The reason of one pydantic error in plain words (``path``: its field path in the model)."""
    kind = e.get("type", "")
    ctx = e.get("ctx") or {}
    value = e.get("input")
    got = f", got {show(value)}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        key = path[-1] if path else value
        model = model_at(root, path[:-1])
        allowed = list(model.model_fields) if model is not None else []
        msg = f"unknown key {show(key)}"
        close = did_you_mean(key, allowed)
        if close:
            msg += f": did you mean {close}?"
        if allowed:
            msg += f" (allowed keys: {', '.join(allowed)})"
        return msg
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", ""))) or [str(ctx.get("expected"))]
        msg = f"{show(value)} is not one of {', '.join(allowed)}"
        close = did_you_mean(value, allowed)
        return msg + (f": did you mean {close}?" if close else "")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        model = model_at(root, path)
        keys = f" with keys {', '.join(model.model_fields)}" if model is not None else ""
        return f"must be a mapping{keys}{got}"
    simple = {
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be text",
        "list_type": "must be a list",
    }
    if kind in simple:
        return simple[kind] + got
    bounds = {
        "greater_than": ("must be greater than", "gt"),
        "greater_than_equal": ("must be at least", "ge"),
        "less_than": ("must be less than", "lt"),
        "less_than_equal": ("must be at most", "le"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{words} {_bound(ctx, key)}{got}"
    if kind in ("too_short", "string_too_short"):
        n = ctx.get("min_length", 1)
        if n == 1:
            return "must not be empty" + (" (give at least one value)" if kind == "too_short" else "")
        unit = "items" if kind == "too_short" else "characters"
        return f"needs at least {n} {unit}{got}"
    if kind in ("too_long", "string_too_long"):
        unit = "items" if kind == "too_long" else "characters"
        return f"is too long: at most {ctx.get('max_length')} {unit}"
    if kind == "json_invalid":
        return f"the body is not valid JSON: {ctx.get('error', e.get('msg'))}"
    msg = str(e.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg.replace("Input should be", "must be")


def plain_errors(
    errors: Sequence[Mapping[str, Any]],
    body: Any = None,
    root: type[BaseModel] | None = None,
    skip: int = 0,
) -> list[dict[str, Any]]:
    """Pydantic errors as ``{loc, msg, type}`` in plain words, one per field and problem.

    ``body``: what was validated (to tell a scalar from a list); ``root``: its model (for
    the allowed keys); ``skip``: leading ``loc`` parts outside the model (``body``, ``query``).
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for e in errors:
        loc = list(e.get("loc", ()))
        rest = [p for p in loc[skip:] if isinstance(p, int) or not _UNION_TAG.search(str(p))]
        groups.setdefault(tuple(loc[:skip] + rest), []).append(e)

    def says_more(key: tuple[Any, ...]) -> bool:
        # Another branch of a union got further here (or deeper): its error is the one to show.
        return any(
            k[: len(key)] == key and any(x.get("type") not in TYPE_ERRORS for x in es)
            for k, es in groups.items()
        )

    out: list[dict[str, Any]] = []
    for key, es in groups.items():
        path = list(key[skip:])
        loc = list(key[:skip]) + _scalar_path(path, body)
        typed = [e for e in es if e.get("type") in TYPE_ERRORS]
        other = [e for e in es if e.get("type") not in TYPE_ERRORS]
        for e in other:
            kind = e.get("type", "value_error")
            out.append({"loc": loc, "msg": plain_message(e, root, path), "type": kind})
        if typed and not says_more(key):
            # Each branch refused the value for its type: one message says what it may be.
            words = list(dict.fromkeys(plain_message(e, root, path).split(", got ")[0] for e in typed))
            msg = " or ".join([words[0], *(w.removeprefix("must be ") for w in words[1:])])
            got = show(typed[0].get("input"))
            out.append({"loc": loc, "msg": f"{msg}, got {got}", "type": typed[0]["type"]})
    return out

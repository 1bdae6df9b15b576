"""Types for what clients send: text a database can store, numbers that are numbers.

* ``Text``: refused (422, at the field's path) when it holds a NUL byte or a lone surrogate.
  Every name, path and free text a client chooses is this type.
* ``CleanText(limit)``: a worker's report (an error message, a device) is never refused: NUL
  bytes and lone surrogates become U+FFFD and it is cut to ``limit``, so a failure is always
  recorded. ``CleanJson`` does the same to every key and string inside a JSON value.
* ``NotBool``: JSON's ``true``/``false`` where a number is expected is a 422, not 1 or 0.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from gridsweep.text import clean_text, text_problem


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


Text = Annotated[str, AfterValidator(_storable)]
CleanJson = BeforeValidator(_clean_json)
NotBool = BeforeValidator(_not_bool)


def CleanText(limit: int) -> Any:
    """A report's text: cleaned (never refused) and cut to ``limit`` characters."""
    return Annotated[str, BeforeValidator(lambda v: clean_text(v, limit) if isinstance(v, str) else v)]

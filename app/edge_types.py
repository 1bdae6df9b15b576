"""Types for what clients send: text a database can store, numbers that are numbers.

* ``Text``: refused (422, at the field's path) when it holds a NUL byte or a lone surrogate.
  Every name, path and free text a client chooses is this type.
* ``CleanText(limit)``: a worker's report (an error message) is never refused: NUL bytes and
  lone surrogates become U+FFFD and it is cut to ``limit``, so a failure is always recorded.
* ``JsonText``: the same refusal for every key and string inside a JSON value.
* ``NotBool``: JSON's ``true``/``false`` where a number is expected is a 422, not 1 or 0.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from worker.text import clean_text, text_problem


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _storable_json(value: Any, where: str = "") -> Any:
    """Refuse a JSON value holding a key or string that cannot be stored (the message names it)."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(f"{where or 'the value'} {problem}")
    elif isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            if (problem := text_problem(key)) is not None:
                raise ValueError(f"a key {problem}")
            _storable_json(v, f"{where}.{key}" if where else key)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _storable_json(v, f"{where}[{i}]")
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


Text = Annotated[str, AfterValidator(_storable)]
JsonText = AfterValidator(_storable_json)
NotBool = BeforeValidator(_not_bool)


def CleanText(limit: int) -> Any:
    """A report's text: cleaned (never refused) and cut to ``limit`` characters."""
    return Annotated[str, BeforeValidator(lambda v: clean_text(v, limit) if isinstance(v, str) else v)]

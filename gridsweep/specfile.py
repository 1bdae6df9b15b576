"""Reading a spec file (YAML, or JSON, which is YAML too) into the mapping the API takes.

Shared by the command line and the Python client. A duplicated key is an error (PyYAML
keeps the last value silently); every error names the file, the line and the column.
A spec without ``name`` is named after its file (``moons.yaml`` -> ``moons``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node


class SpecFileError(ValueError):
    """A spec file that cannot be read or parsed; the message names the file (and line, column)."""

    def __init__(self, path: str, message: str, line: int | None = None, column: int | None = None) -> None:
        self.path, self.line, self.column = path, line, column
        where = path if line is None else f"{path}, line {line}, column {column}"
        super().__init__(f"{where}: {message}")


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: let PyYAML say so
                    continue
                if first is not None:
                    raise ConstructorError(
                        None,
                        None,
                        f"key {key!r} appears twice in one mapping "
                        f"(first at line {first.start_mark.line + 1}); keep one of them",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def parse_spec_text(text: str, path: str = "<spec>") -> Any:
    """The YAML document in ``text``; errors name ``path``, the line and the column (from 1)."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        if exc.context and exc.problem and "twice" not in exc.problem:
            problem = f"{exc.problem} ({exc.context})"
        if mark is None:
            raise SpecFileError(path, problem) from None
        raise SpecFileError(path, problem, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise SpecFileError(path, f"not valid YAML: {exc}") from None


def load_spec_file(path: str | Path, default_name: bool = True) -> dict[str, Any]:
    """The spec in the file at ``path`` as a mapping (not validated: the API does that).

    ``default_name``: a spec without ``name`` gets the file's stem.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecFileError(str(path), f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SpecFileError(str(path), "not a text file (UTF-8 expected)") from None
    raw = parse_spec_text(text, str(path))
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise SpecFileError(str(path), f"a spec is a mapping (name, dataset, parameters, ...), this is {got}")
    if default_name and raw.get("name") is None:
        raw["name"] = p.stem
    return raw

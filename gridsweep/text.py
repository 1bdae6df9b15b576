"""Text that a database can store: no NUL bytes, no lone UTF-16 surrogates.

PostgreSQL text cannot hold a NUL byte, and no UTF-8 column (nor a JSON document sent as
UTF-8) can hold a lone surrogate (``"\\ud800"`` in JSON, or what ``surrogateescape`` makes of
bytes that are not UTF-8). The API refuses such text where a client chose it (a name, a
path) and cleans it where it only reports something (a worker's error message); the
worker cleans its error texts before sending them, so a failure is always recorded.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a NUL byte or a lone surrogate becomes in cleaned text


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None when it can."""
    nul = text.find("\x00")
    if nul >= 0:
        return f"contains a NUL byte (\\u0000) at position {nul}; text cannot hold one"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return (
            f"contains a UTF-16 surrogate code point (\\u{code:04x}) at position {exc.start}; "
            "text must be valid Unicode"
        )
    return None


def clean_text(text: str, limit: int | None = None) -> str:
    """``text`` with each NUL byte and lone surrogate replaced by U+FFFD, cut to ``limit``.

    A surrogate pair (two halves, in order) is joined into the character it encodes.
    """
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text if limit is None else text[:limit]

"""Request bodies parsed strictly: valid UTF-8 JSON, no duplicated keys, no lone surrogates, bounded nesting.

Python's ``json`` resolves a duplicated key last-wins and turns a ``"\\ud800"`` escape (or the UTF-8-encoded
bytes of a surrogate) into a str that cannot be encoded again, which fails later, far from the request, when
an answer or a log line is written. Both /v1 and /v2 bodies pass through :func:`loads` first, which refuses
them with the location of the offending key or value (never the value itself) as ``JsonRefused``.
"""

from __future__ import annotations

import json
import re
from typing import Any


class JsonRefused(ValueError):
    """A body refused by :func:`loads`: ``loc`` (keys and indices from the document's root), a message and a
    pydantic-style error ``type``."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, type_: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg
        self.type = type_

    def error(self, prefix: tuple[str | int, ...] = ("body",)) -> dict[str, Any]:
        """The refusal as one of FastAPI's request validation errors (``loc`` under ``prefix``)."""
        return {"type": self.type, "loc": (*prefix, *self.loc), "msg": self.msg, "input": {}}


class _Pairs(dict):
    """An object as parsed, remembering the first key it saw more than once."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = _Pairs(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                document.duplicate = key
                break
            seen.add(key)
    return document


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def quoted(key: str) -> str:
    """A key for a message: JSON-quoted with non-ASCII escaped, so that it always encodes."""
    return json.dumps(key)


def check(document: Any) -> None:
    """Refuse (``JsonRefused``) the first duplicated key or string that is not valid Unicode, depth first."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, str):
            if not _encodable(node):
                raise JsonRefused(loc, "not valid Unicode (a lone surrogate)", "string_unicode")
        elif isinstance(node, dict):
            if not all(_encodable(key) for key in node):
                raise JsonRefused(loc, "a key is not valid Unicode (a lone surrogate)", "string_unicode")
            duplicate = getattr(node, "duplicate", None)
            if duplicate is not None:
                raise JsonRefused((*loc, duplicate), f"duplicated key {quoted(duplicate)}", "json_duplicate_key")
            stack.extend(((*loc, key), value) for key, value in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend(((*loc, index), value) for index, value in reversed(list(enumerate(node))))


# The only way to a lone surrogate in a document parsed from valid UTF-8: a \uD800-\uDFFF escape. Text without
# one (and without a duplicated key) needs no walk; with one (or a literal backslash before "ud8"), the walk
# decides and says where.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(text: bytes | str) -> Any:
    """The JSON document of ``text`` with plain dicts, after :func:`check`; ``JsonRefused`` otherwise (JSON or
    UTF-8 invalid: ``loc`` is the character or byte offset)."""
    duplicated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicated
        document = _object(items)
        duplicated = duplicated or document.duplicate is not None  # type: ignore[attr-defined]
        return document

    try:
        # Decoded here: json.loads would take bytes in UTF-16 or UTF-32 too, and a UTF-8 BOM.
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        document = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise JsonRefused((exc.pos,), "JSON decode error", "json_invalid") from None
    except UnicodeDecodeError as exc:
        raise JsonRefused((exc.start,), "JSON decode error: not valid UTF-8", "json_invalid") from None
    except RecursionError:
        raise JsonRefused((), "JSON decode error: nested too deeply", "json_invalid") from None
    except ValueError:  # Python refuses integers of over 4,300 digits (sys.get_int_max_str_digits)
        raise JsonRefused((), "JSON decode error: a number with too many digits", "json_invalid") from None
    if duplicated or SURROGATE_ESCAPE.search(text):
        check(document)
    return document

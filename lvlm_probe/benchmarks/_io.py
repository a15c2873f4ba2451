"""Robust reading of benchmark files (JSON array, JSON lines with LF or CRLF, concatenated JSON objects).

Every error names the file, the line and, where it applies, the missing key; nothing is silently skipped
or truncated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, List, Tuple, Union

from lvlm_probe.errors import InputError, LvlmProbeError

PathLike = Union[str, "os.PathLike[str]"]

#: One record of a file: (1-based line number where the record starts, decoded object).
Record = Tuple[int, Any]


class MissingDependencyError(LvlmProbeError, ImportError):
    """An optional dependency (NLTK data, spaCy model) needed by a scorer is not installed."""


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_text(path: PathLike) -> str:
    """Read a file as UTF-8 (a leading BOM is dropped), naming the file in any error."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text ({exc})") from None


def read_records(path: PathLike) -> List[Record]:
    """Read every JSON record of a benchmark file, whatever its shape.

    Accepted shapes: a JSON array (``indent=4`` SEEM / AMBER / HallusionBench files), JSON lines with LF or
    CRLF endings (POPE COCO, LLaVA), and concatenated pretty-printed objects (POPE ``caption_data``).
    A single top-level object is returned as one record.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    list of (line, object)
        The 1-based line where each record starts, and the decoded record.

    Raises
    ------
    InputError
        When the file is missing, empty, not UTF-8 or holds invalid JSON (the message names the file and line).
    """
    text = read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text):
        raise InputError(f"{path}: file is empty")
    out: List[Record] = []

    def decode_at(p: int) -> Tuple[Any, int]:
        try:
            return decoder.raw_decode(text, p)
        except json.JSONDecodeError as exc:
            start = _line_of(text, p)
            where = f"column {exc.colno}" if exc.lineno == start else f"line {exc.lineno} column {exc.colno}"
            raise InputError(f"{path}: line {start}: invalid JSON in the record starting there ({exc.msg} at {where})") from None
        except RecursionError:
            raise InputError(f"{path}: line {_line_of(text, p)}: the record starting there is nested too deeply to "
                             "read (not a benchmark record?)") from None

    if text[pos] == "[":
        pos = _skip_ws(text, pos + 1)
        if pos < len(text) and text[pos] == "]":
            end = _skip_ws(text, pos + 1)
            if end < len(text):
                raise InputError(f"{path}: line {_line_of(text, end)}: unexpected data after the JSON array")
            return out
        while True:
            line = _line_of(text, pos)
            obj, pos = decode_at(pos)
            out.append((line, obj))
            pos = _skip_ws(text, pos)
            if pos >= len(text):
                raise InputError(f"{path}: line {_line_of(text, pos)}: JSON array is not closed (truncated file?)")
            if text[pos] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if text[pos] == "]":
                end = _skip_ws(text, pos + 1)
                if end < len(text):
                    raise InputError(f"{path}: line {_line_of(text, end)}: unexpected data after the JSON array")
                return out
            raise InputError(f"{path}: line {_line_of(text, pos)}: expected ',' or ']' between array elements")

    # JSON lines or concatenated objects: decode one value after another.
    while pos < len(text):
        line = _line_of(text, pos)
        obj, pos = decode_at(pos)
        out.append((line, obj))
        pos = _skip_ws(text, pos)
    return out


def read_json(path: PathLike) -> Any:
    """Read a file that holds exactly one JSON value (array or object)."""
    recs = read_records(path)
    text = read_text(path).lstrip()
    if text.startswith("["):
        return [obj for _, obj in recs]
    if len(recs) != 1:
        raise InputError(f"{path}: expected one JSON value, found {len(recs)} (line {recs[1][0]} starts another)")
    return recs[0][1]


def require_records(path: PathLike, records: List[Record], what: str) -> List[Record]:
    """Refuse a file that holds no record at all (an empty JSON array): nothing to score."""
    if not records:
        raise InputError(f"{path}: no {what} (the file holds an empty JSON array)")
    return records


def require_dict(path: PathLike, line: int, obj: Any) -> dict:
    """Check that a record is a JSON object."""
    if not isinstance(obj, dict):
        raise InputError(f"{path}: line {line}: expected a JSON object, found {type(obj).__name__}")
    return obj


def get_key(path: PathLike, line: int, obj: Any, key: str, types: Union[type, Tuple[type, ...], None] = None) -> Any:
    """Return ``obj[key]``, raising an error that names file, line and key when it is missing or mistyped."""
    d = require_dict(path, line, obj)
    if key not in d:
        raise InputError(f"{path}: line {line}: missing key '{key}'")
    val = d[key]
    if types is not None and not isinstance(val, types):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise InputError(f"{path}: line {line}: key '{key}' should be {want}, found {type(val).__name__} ({val!r})")
    return val


def first_key(path: PathLike, line: int, obj: Any, keys: Iterable[str],
              types: Union[type, Tuple[type, ...], None] = None) -> Tuple[str, Any]:
    """Return the first of ``keys`` present in the record (key, value); error naming all of them otherwise."""
    d = require_dict(path, line, obj)
    keys = list(keys)
    for k in keys:
        if k in d:
            return k, get_key(path, line, d, k, types)
    names = "' or '".join(keys)
    raise InputError(f"{path}: line {line}: missing key '{names}'")

"""The store's journal: an append-only JSON-lines index of shards and failures.

Every flush of ``capture`` appends one line (and fsyncs it), so the bytes written for a store of n items grow as
O(n), where rewriting a whole manifest at every flush grew as O(n²). A line is either

- ``{"shard": {"file", "items", "rows"}, "meta": {item_id: meta}, "keys": {key: spec}}`` (``keys`` only carries
  the key specs this writer has not written before), or
- ``{"failed": {item_id: reason}}``.

A process killed in the middle of an append leaves a *torn* last line (no trailing newline, or not JSON). Readers
ignore it (the shard it would list is an orphan file, captured again on resume) and the next writer cuts it off
before appending. A damaged line anywhere else is a :class:`~lvlm_probe.errors.StoreError` naming the file and line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

from lvlm_probe.errors import StoreError

#: The main journal of a store directory.
JOURNAL = "index.jsonl"
_RANK_RE = re.compile(r"^index\.rank-(\d{5})\.jsonl$")


def rank_journal(rank: int) -> str:
    """File name of the journal rank ``rank`` writes during a distributed capture (merged into :data:`JOURNAL`)."""
    return f"index.rank-{rank:05d}.jsonl"


def rank_journals(path: Path) -> list[Path]:
    """The per-rank journals present in a store directory, by rank."""
    found = [(int(m.group(1)), p) for p in path.glob("index.rank-*.jsonl") if (m := _RANK_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def read_journal(path: Path) -> tuple[list[tuple[int, dict]], int | None]:
    """Records of one journal.

    Returns
    -------
    records : list of (line number, dict)
        Complete lines, 1-based line numbers.
    torn_at : int or None
        Byte offset where a torn last line starts (a writer killed mid-append), else None.

    Raises
    ------
    StoreError
        A line other than the last is not a JSON object.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the store's index ({exc})") from exc
    # Each append writes whole lines, each ending in a newline; a kill can only leave a prefix of the last
    # append: complete lines followed by one piece without its newline.
    *complete, tail = data.split(b"\n")
    records: list[tuple[int, dict]] = []
    for n, raw in enumerate(complete, start=1):
        rec = _parse(raw)
        if rec is None:
            raise StoreError(f"{path} line {n}: not a JSON object; the store's index is damaged. Delete the store "
                             "and capture again (or restore the file from a backup)")
        records.append((n, rec))
    torn_at = len(data) - len(tail) if tail else None
    return records, torn_at


def _parse(raw: bytes) -> dict | None:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def cut_torn_tail(path: Path) -> None:
    """Remove a torn last line left by a killed writer, so the next append starts on a line of its own."""
    _, torn_at = read_journal(path)
    if torn_at is not None:
        with open(path, "r+b") as fh:
            fh.truncate(torn_at)
            fh.flush()
            os.fsync(fh.fileno())


def append_lines(path: Path, records: list[dict]) -> None:
    """Append records as JSON lines, flushed and fsynced before returning."""
    if not records:
        return
    blob = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())


def iter_store_records(path: Path) -> Iterator[tuple[str, dict]]:
    """Every record of a store directory: the main journal, then each rank's journal (un-merged runs), as
    ``(where, record)`` with ``where`` = ``"FILE line N"`` for messages."""
    for jp in [path / JOURNAL, *rank_journals(path)]:
        records, _ = read_journal(jp)
        for n, rec in records:
            yield f"{jp} line {n}", rec

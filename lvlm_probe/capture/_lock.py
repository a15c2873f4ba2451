"""One writer per store: an advisory lock file holding the writer's pid, host and start time."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from lvlm_probe.errors import StoreError

#: The writer's lock file inside a store directory: ``{"pid", "host", "started"}`` of the process writing it.
LOCK_FILE = ".writer.lock"


def _lock_holder(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder_gone(holder: dict | None) -> bool:
    """A lock is stale when it is unreadable (its writer died while creating it) or its process, on this host, is
    gone. A holder on another host cannot be checked and counts as alive."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the one-writer lock of a store directory (created if needed) while the block runs.

    A second writer gets a :class:`StoreError` naming the holder (pid, host, start time). A lock left by a killed
    process on this host is detected (its pid is gone) and taken over. The lock is removed on exit, also on error.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise StoreError(f"{str(p)!r} is a file; give a directory for the activation store")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((q for q in p.parents if q.exists() and not q.is_dir()), p)
        raise StoreError(f"cannot create the store directory {str(p)!r}: {str(blocker)!r} is a file; choose an out "
                         "directory that is not below a file") from None
    except PermissionError as exc:
        raise StoreError(f"cannot create the store directory {str(p)!r} ({exc.strerror}); choose a writable out "
                         "directory") from None
    lock = p / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if _holder_gone(holder):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise StoreError(
                f"{str(p)!r} is being written by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('started')}; wait for it to finish (one writer per store), or delete {str(lock)!r} if "
                "that process is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:
        raise StoreError(f"could not take the writer lock {str(lock)!r}; another process keeps creating it")
    try:
        yield lock
    finally:
        if (_lock_holder(lock) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

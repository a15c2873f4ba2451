"""The one failure policy of batch runs (capture and diagnose): a bad item never fails its neighbours.

A batch that raises is retried item by item; items that still raise are recorded with their reason and the run
goes on. Bad *data* raises :class:`~lvlm_probe.errors.InputError`; a non-input error that hits every item of a
batch is a bug or a bad model, so it is raised instead of being recorded as a failure of every item.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from lvlm_probe.errors import InputError

T = TypeVar("T")
R = TypeVar("R")


def failure_reason(exc: BaseException) -> str:
    """``"ExceptionType: message"`` on one line."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"


def run_isolated(chunk: Sequence[T], run: Callable[[Sequence[T]], R], record: Callable[[T, str], None]) -> list[
        tuple[Sequence[T], R]]:
    """Run ``run(chunk)``; if it raises, run each item alone and ``record(item, reason)`` the ones that fail.

    Returns
    -------
    list of (sub_chunk, result)
        ``[(chunk, run(chunk))]`` when the batch ran, else one entry per item that ran alone.

    Raises
    ------
    Exception
        The last error, when every item of the batch failed alone and not all with an ``InputError``.
    """
    try:
        return [(chunk, run(chunk))]
    except Exception:  # noqa: BLE001 - isolate the bad item(s), keep the rest
        pass
    done: list[tuple[Sequence[T], R]] = []
    errors: list[Exception] = []
    for it in chunk:
        try:
            done.append(([it], run([it])))
        except Exception as exc:  # noqa: BLE001
            record(it, failure_reason(exc))
            errors.append(exc)
    if len(errors) == len(chunk) and not all(isinstance(e, InputError) for e in errors):
        raise errors[-1] from None
    return done

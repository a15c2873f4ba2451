"""Execute notebooks with nbclient (``make notebooks``): CPU, offline, fail on the first error.

    .venv/bin/python notebooks/_execute.py [NOTEBOOK ...]      # default: every notebooks/*.ipynb

The repository copies are never modified: each notebook is read, executed in memory with the
notebooks folder as working directory, and the executed copy is written (atomically) to
``runs/notebooks/`` for inspection. Exit status 1 names the notebook and the failing cell.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def execute(path: Path, out_dir: Path, timeout: int) -> float:
    """Run one notebook; return its wall time in seconds. Raises CellExecutionError on a failing cell."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.time()
    try:
        client.execute()
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            nbformat.write(nb, fh)
        os.replace(tmp, out_dir / path.name)
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=HERE.parent / "runs" / "notebooks",
                    help="where executed copies go (default runs/notebooks)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    a = ap.parse_args(argv)
    paths = a.notebooks or sorted(HERE.glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    failed = []
    for p in paths:
        try:
            dt = execute(p, a.out, a.timeout)
            print(f"ok    {p.name}  {dt:6.1f} s")
        except CellExecutionError as exc:
            failed.append(p.name)
            print(f"FAIL  {p.name}\n{exc}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {failed}; executed copies are in {a.out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

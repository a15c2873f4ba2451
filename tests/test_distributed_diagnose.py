"""``diagnose`` on torch.distributed (torchrun, 2 gloo ranks) equals a one-process run: the same generations,
errors, evidence, diagnoses and probe curves, byte for byte; a bad item is recorded and the rest kept; a rerun
resumes every step; a failure on one rank is raised on every rank, naming it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lvlm_probe._dist import batches, gather, on_rank0, rank_share
from lvlm_probe.organisms import default_items
from lvlm_probe.tracing.run import _merge_parts, _Part

pytestmark = pytest.mark.slow
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
TABLES = ("generations", "errors", "evidence", "diagnosis", "probe_curves")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def _items_file(tmp: Path, n: int = 12) -> Path:
    """The cooccurrence organism's default items on disk; item 5's image is missing (a recorded failure)."""
    (tmp / "img").mkdir()
    lines = []
    for k, it in enumerate(default_items("organism:cooccurrence", n, 0)):
        p = tmp / "img" / f"{k}.png"
        if k != 5:
            it.image.save(p)
        lines.append(json.dumps({"id": it.id, "image": str(p), "prompt": it.prompt, "task": it.task,
                                 "scene": it.scene.to_dict()}))
    path = tmp / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _diagnose(launch: list[str], items: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [*launch, "-m", "lvlm_probe", "diagnose", "--model", "organism:cooccurrence", "--items", str(items),
           "--n-items", "12", "--batch-size", "4", "--probe-items", "40", "--out", str(out)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_distributed_diagnose_equals_one_process(tmp_path):
    items = _items_file(tmp_path)
    _diagnose([sys.executable], items, tmp_path / "one")
    two = _diagnose(TORCHRUN, items, tmp_path / "two")
    assert two.stdout.count("items diagnosed") == 1  # rank 0 prints and renders; rank 1 only computes
    for name in TABLES:
        assert (tmp_path / "one" / f"{name}.csv").read_bytes() == (tmp_path / "two" / f"{name}.csv").read_bytes(), name
    gens = (tmp_path / "two" / "generations.csv").read_text()
    assert "1 failed" in two.stdout and "5.png" in gens  # the bad item is recorded, the 11 others diagnosed
    man = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert man["n_errors"] > 0 and man["n_failed"] == 1
    assert (tmp_path / "two" / "report.html").is_file()
    # the rerun resumes every step and changes nothing
    before = {n: (tmp_path / "two" / f"{n}.csv").read_bytes() for n in TABLES}
    _diagnose(TORCHRUN, items, tmp_path / "two")
    man = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert {man["timings"][s] for s in ("run", "evidence", "diagnoses")} == {"resumed"}
    assert before == {n: (tmp_path / "two" / f"{n}.csv").read_bytes() for n in TABLES}


def test_rank_blocks_cover_every_batch_once_in_order():
    chunks = batches(list(range(23)), 4)
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 3]
    for world in (1, 2, 3, 4, 7):
        blocks = [rank_share(chunks, r, world) for r in range(world)]
        assert [c for b in blocks for c in b] == chunks


def test_merged_parts_number_batches_as_one_process():
    import pandas as pd

    a = _Part({"x": {"item_id": "x", "batch": 0}, "y": {"item_id": "y", "batch": 1}}, {},
              [pd.DataFrame({"item_id": ["y"], "b": [0], "batch": [1]})], 2)
    b = _Part({"z": {"item_id": "z", "batch": 0}}, {"w": "OSError: missing"},
              [pd.DataFrame({"item_id": ["z"], "b": [0], "batch": [0]})], 1)
    rows, failed, errors = _merge_parts([a, b])
    assert [rows[i]["batch"] for i in "xyz"] == [0, 1, 2]
    assert failed == {"w": "OSError: missing"}
    assert [int(e.batch.iloc[0]) for e in errors] == [1, 2]


def test_outside_a_group_the_helpers_run_locally():
    assert gather(lambda: 3, "x") == [3]
    assert on_rank0(lambda: 4, "x") == 4


def test_a_failure_on_one_rank_is_raised_on_every_rank(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""
        import torch.distributed as dist
        from lvlm_probe._dist import PeerError, gather, on_rank0

        dist.init_process_group("gloo")
        rank = dist.get_rank()

        def work():
            if rank == 1:
                raise ValueError("bad batch on rank one")
            return rank

        try:
            gather(work, "generate + judge")
        except PeerError as exc:
            print(f"rank {rank}: PeerError: {exc}")
        except ValueError as exc:
            print(f"rank {rank}: own: {exc}")
        try:
            on_rank0(lambda: 1 / 0, "probe verdicts")
        except PeerError as exc:
            print(f"rank {rank}: PeerError: {exc}")
        except ZeroDivisionError:
            print(f"rank {rank}: own: ZeroDivisionError")
        dist.destroy_process_group()
    """))
    done = subprocess.run([*TORCHRUN, str(script)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "rank 0: PeerError: generate + judge failed on rank 1: ValueError: bad batch on rank one" in out
    assert "rank 1: own: bad batch on rank one" in out
    assert "rank 0: own: ZeroDivisionError" in out
    assert "rank 1: PeerError: probe verdicts failed on rank 0: ZeroDivisionError: division by zero" in out

"""Kill anywhere, lose nothing: a capture SIGKILLed at seeded points (mid-forward, mid-shard write, mid-journal
append, during a distributed merge) resumes to a store identical to an uninterrupted run; a distributed capture
(torchrun, 2 gloo ranks) equals a single-process one bitwise."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lvlm_probe as lp

sys.path.insert(0, str(Path(__file__).parent))
import _capture_child as child  # noqa: E402

pytestmark = pytest.mark.slow
CHILD = str(Path(__file__).with_name("_capture_child.py"))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

# Ten kill points, the occurrence drawn from a fixed seed. A single run of the child's 12 items (batches of 2,
# one failing item, shards of 2) makes 6 shard writes, 6 shard lines and 1 failure line; each batch runs 4 hooks.
_rng = random.Random(20261203)
POINTS = [
    ("forward", _rng.randint(1, 4), 1), ("forward", _rng.randint(5, 20), 1),
    ("shard_tmp", _rng.randint(1, 2), 1), ("shard_tmp", _rng.randint(3, 6), 1),
    ("orphan", _rng.randint(1, 6), 1), ("torn", _rng.randint(1, 3), 1), ("torn", _rng.randint(4, 6), 1),
    ("failure_torn", 1, 1),
    ("merge_torn", 1, 2), ("merge_appended", 1, 2),
]


def _config(model_dir, out, images, kill=None, marker=None, kill_rank=0):
    return json.dumps({"model": str(model_dir), "out": str(out), "images": str(images), "kill": kill,
                       "kill_rank": kill_rank, "marker": str(marker) if marker else None})


def _launch(cfg: str, ranks: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, CHILD, cfg] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", CHILD, cfg]
    return subprocess.run(cmd, env=ENV, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def reference(llava, llava_dir, tmp_path_factory, one_torch_thread):
    """The uninterrupted single-process store (in this process, one thread)."""
    tmp = tmp_path_factory.mktemp("kill_ref")
    items = child.make_items(tmp / "images")
    return lp.capture(llava, items, sites=child.SITES, select=child.SELECT, out=tmp / "ref", batch_size=child.BS,
                      shard_items=child.SHARD, progress=False), tmp / "images"


def assert_same_store(a: lp.ActivationStore, b: lp.ActivationStore) -> None:
    assert a.item_ids == b.item_ids
    assert a.failed.keys() == b.failed.keys()
    assert sorted(a.keys()) == sorted(b.keys())
    assert a.item_meta().equals(b.item_meta())
    for site, sel in b.keys():
        ra, ia = a.get_rows(site, sel)
        rb, ib = b.get_rows(site, sel)
        assert ia.equals(ib), (site, sel)
        assert ra.dtype == rb.dtype and torch.equal(ra, rb), (site, sel)


def test_distributed_capture_equals_single_process_bitwise(reference, llava_dir, tmp_path):
    ref, images = reference
    out = tmp_path / "dist"
    done = _launch(_config(llava_dir, out, images), ranks=2)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    store = lp.ActivationStore(out)
    assert_same_store(store, ref)
    assert child.BAD in store.failed and "img5.png" in store.failed[child.BAD]
    assert not list(out.glob("index.rank-*.jsonl"))  # merged
    assert {p.name.split("-")[1] for p in (out / "shards").iterdir()} == {"00000", "00001"}  # both ranks wrote


def test_distributed_capture_from_the_command_line(llava_dir, tmp_path, reference):
    """``torchrun -m lvlm_probe capture`` (the documented launch) on 2 CPU ranks."""
    ref, images = reference
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": it.id, "image": str(it.image), "prompt": it.prompt}) + "\n"
                             for it in child.make_items(images)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lvlm_probe",
           "capture", "--model", str(llava_dir), "--items", str(items), "--sites", *child.SITES, "--select",
           *child.SELECT, "--out", str(tmp_path / "cli"), "--batch-size", str(child.BS)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, timeout=600, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout[done.stdout.index("{"):])  # rank 0 prints the summary once
    assert printed["items"] == len(ref) and list(printed["failed"]) == [child.BAD]
    store = lp.ActivationStore(tmp_path / "cli")
    assert store.item_ids == ref.item_ids
    for site, sel in ref.keys():  # shards of other sizes than the reference's, the same rows
        assert torch.equal(store.get_rows(site, sel)[0], ref.get_rows(site, sel)[0]), (site, sel)


@pytest.mark.parametrize("point,n,ranks", POINTS, ids=[f"{p}:{n}x{r}" for p, n, r in POINTS])
def test_killed_capture_resumes_to_identical_store(point, n, ranks, reference, llava, llava_dir, tmp_path):
    _kill_and_resume(point, n, ranks, 0, reference, llava, llava_dir, tmp_path)


def test_rank_killed_mid_forward_resumes_per_rank(reference, llava_dir, tmp_path):
    """Rank 1 dies mid-forward; the 2-rank rerun resumes each rank's share and merges in item order."""
    _kill_and_resume("forward", 3, 2, 1, reference, None, llava_dir, tmp_path)


def _kill_and_resume(point, n, ranks, kill_rank, reference, llava, llava_dir, tmp_path):
    ref, images = reference
    out, marker = tmp_path / "killed", tmp_path / "killed.marker"
    killed = _launch(_config(llava_dir, out, images, kill=f"{point}:{n}", marker=marker, kill_rank=kill_rank), ranks)
    assert marker.exists(), f"the run ended before reaching {point}:{n}: {killed.stderr.decode()[-2000:]}"
    assert killed.returncode != 0
    partial = lp.ActivationStore(out)  # whatever a kill leaves is a readable store
    assert set(partial.item_ids) <= set(ref.item_ids)
    for site, sel in partial.keys():
        partial.get_rows(site, sel)
    # resume: a single process (which merges what the ranks left), or for a rank killed mid-run the ranks again
    if llava is None:
        done = _launch(_config(llava_dir, out, images), ranks)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        resumed = lp.ActivationStore(out)
    else:
        lp.capture(llava, child.make_items(images), sites=child.SITES, select=child.SELECT, out=out,
                   batch_size=child.BS, shard_items=child.SHARD, progress=False)
        resumed = lp.ActivationStore(out)  # read back from disk, not the writer's in-memory index
    assert_same_store(resumed, ref)
    assert not list(out.rglob("*.tmp")) and not list(out.glob("index.rank-*.jsonl"))


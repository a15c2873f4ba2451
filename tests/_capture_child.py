"""A capture run in its own process, optionally killed (SIGKILL) at a chosen point; used by test_resume_kill.py.

Run as ``python _capture_child.py CONFIG_JSON`` or under ``torchrun`` (each rank joins a gloo group). CONFIG:
``model`` (directory), ``out`` (store), ``kill`` (``"point:n"`` or null), ``kill_rank`` (rank that dies under
torchrun), ``marker`` (file written just before the kill). Points, each at its n-th occurrence in this process:

- ``forward``: inside a capture hook, in the middle of a forward pass;
- ``shard_tmp``: half-way through writing a shard's temporary file;
- ``orphan``: after a shard is renamed into place, before its journal line;
- ``torn``: half-way through appending a journal line;
- ``failure_torn``: half-way through appending a failure record;
- ``merge_torn``: half-way through rank 0's merge of the rank journals;
- ``merge_appended``: after the merge appended everything, before the rank journals are deleted.
"""

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)  # bitwise-reproducible reductions, whatever the machine's load
sys.path.insert(0, str(Path(__file__).parent))

import lvlm_probe as lp  # noqa: E402
from lvlm_probe.capture import run, store  # noqa: E402

N, BS, SHARD = 12, 2, 2
SITES = ["llm.resid_post.*", "projector.out"]
SELECT = ["image_mean", "last_prompt", "image_patches"]
BAD = "k005"


def make_items(image_dir: Path) -> list:
    """N items with images on disk (one missing: a recorded failure)."""
    from conftest import rand_image

    image_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(N):
        p = image_dir / f"img{k}.png"
        if k != 5 and not p.exists():
            rand_image(k, 30 + k, 40).save(p)
        items.append(lp.Item(id=f"k{k:03d}", image=str(p), prompt="what is in the image ?" + " ?" * (k % 4)))
    return items


def _die(marker: str) -> None:
    Path(marker).write_text("killed")
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(point: str, n: int, marker: str) -> None:
    """Patch the capture code so this process SIGKILLs itself at the n-th occurrence of ``point``."""
    count = {"k": 0}

    def hit() -> bool:
        count["k"] += 1
        return count["k"] == n

    if point == "forward":
        make = run._Recorder.hook_fn

        def hook_fn(self, name):
            fn = make(self, name)
            return lambda t, hook=None: _die(marker) if hit() else fn(t, hook)

        run._Recorder.hook_fn = hook_fn
    elif point == "shard_tmp":
        write = store.atomic_write_bytes

        def atomic_write_bytes(path, data):
            if str(path).endswith(".safetensors") and hit():
                fd, _ = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
                os.write(fd, data[: len(data) // 2])
                _die(marker)
            write(path, data)

        store.atomic_write_bytes = atomic_write_bytes
    else:
        _patch_appends(point, hit, marker)


def _patch_appends(point: str, hit, marker: str) -> None:
    append, merge = store.append_lines, store.ActivationStore.merge_rank_journals
    state = {"merging": False}

    def append_lines(path, records):
        failure = any("failed" in r for r in records)
        wanted = {"orphan": not state["merging"], "torn": not state["merging"] and not failure,
                  "failure_torn": failure and not state["merging"], "merge_torn": state["merging"],
                  "merge_appended": state["merging"]}[point]
        if wanted and hit():
            if point == "orphan":
                _die(marker)
            if point == "merge_appended":
                append(path, records)
                _die(marker)
            blob = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
            with open(path, "ab") as fh:
                fh.write(blob[: len(blob) // 2])
            _die(marker)
        append(path, records)

    def merge_rank_journals(self, order=None):
        state["merging"] = True
        return merge(self, order)

    store.append_lines = append_lines
    store.ActivationStore.merge_rank_journals = merge_rank_journals


def main() -> None:
    cfg = json.loads(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    if cfg.get("kill") and rank == cfg.get("kill_rank", 0):
        point, n = cfg["kill"].split(":")
        install_kill(point, int(n), cfg["marker"])
    model = lp.load(cfg["model"], device="cpu")
    lp.capture(model, make_items(Path(cfg["images"])), sites=SITES, select=SELECT, out=cfg["out"], batch_size=BS,
               shard_items=SHARD, progress=False)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

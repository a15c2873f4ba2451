"""A capture killed mid-run (SIGKILL) leaves a readable store; resuming gives identical tensors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

import lvlm_probe as lp
from conftest import rand_image

N, BS = 24, 2
SITES = ["llm.resid_post.*", "projector.out"]
SELECT = ["image_mean", "last_prompt", "image_patches"]


def make_items():
    return [lp.Item(id=f"k{k:03d}", image=rand_image(k, 30 + k, 40), prompt="what is in the image ?" + " ?" * (k % 4))
            for k in range(N)]


CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)  # bitwise-reproducible reductions, whatever the machine's load
    sys.path.insert(0, {tests!r})
    import lvlm_probe as lp
    import importlib
    run = importlib.import_module("lvlm_probe.capture.run")
    from test_resume_kill import make_items, SITES, SELECT, BS
    slow = run._run_batch
    def slowed(*a, **k):
        time.sleep(0.25)
        return slow(*a, **k)
    if {slow_down!r}:
        run._run_batch = slowed
    model = lp.load({model!r}, device="cpu")
    print("loaded", flush=True)
    lp.capture(model, make_items(), sites=SITES, select=SELECT, out={out!r}, batch_size=BS, shard_items=2,
               progress=False)
    """
)


def test_killed_capture_resumes_to_identical_tensors(llava, llava_dir, tmp_path):
    out = tmp_path / "killed"
    def script(where, slow_down):
        return CHILD.format(tests=str(Path(__file__).parent), model=str(llava_dir), out=str(where), slow_down=slow_down)

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script(out, True)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    manifest = out / "manifest.json"
    deadline = time.time() + 120
    n_shards = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            if manifest.exists():
                try:
                    n_shards = len(json.loads(manifest.read_text())["shards"])
                except json.JSONDecodeError:  # pragma: no cover - would mean a torn manifest
                    raise AssertionError("manifest was visible half-written") from None
                if n_shards >= 3:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, f"child ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = lp.ActivationStore(out)
    assert 0 < len(partial) < N, len(partial)
    assert partial.item_ids == [it.id for it in make_items()][: len(partial)]
    partial.get("llm.resid_post.1", "image_mean")  # every listed shard is readable

    # resume and the uninterrupted reference each run in a fresh process, like the killed one
    for where in (out, tmp_path / "fresh"):
        done = subprocess.run([sys.executable, "-c", script(where, False)], env=env, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    resumed, fresh = lp.ActivationStore(out), lp.ActivationStore(tmp_path / "fresh")
    assert resumed.item_ids == fresh.item_ids == [it.id for it in make_items()]
    for site, sel in fresh.keys():
        if sel == "image_patches":
            a, ia = resumed.get_rows(site, sel)
            b, ib = fresh.get_rows(site, sel)
            assert ia.equals(ib)
        else:
            a, b = resumed.get(site, sel), fresh.get(site, sel)
        assert torch.equal(a, b), (site, sel)

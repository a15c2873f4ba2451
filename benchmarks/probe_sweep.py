"""probe_sweep speed: every layer × 3 concept families on 10k items, against a 60 s target (2 cores).

What is measured
----------------
A synthetic activation store shaped like the shipped organisms (64 px scenes of the SceneWorld,
a 4×4 patch grid; vision.resid_post.0-1 and projector.in with d=64; projector.out and
llm.resid_post.0-3 with d=96; selections ``image_mean`` and ``image_patches``; 8 sites) is written
to a temporary directory with ``ActivationStore``'s own writer. Each patch row is a fixed
position embedding plus, for the object in that cell, class, colour and size embeddings whose
gain grows with depth, plus Gaussian noise, so the probes have real (not trivial) work to do.
Labels come from ``scene_labels`` over the items' scene graphs: object (8 classes, image level),
attribute (colour 6-way and size 2-way, object level) and relation (4-way, pair level).

The timed call is ``probe_sweep(store, labels)`` with its defaults (5 folds, control task, 200
permutations, 200 bootstrap resamples), reading the store from disk. Building the store and the
labels is not timed. ``--organism NAME`` instead captures the store from a shipped organism
(``organism:NAME``), which takes a few minutes on CPU for 10k items; the capture is timed apart.

Usage::

    python benchmarks/probe_sweep.py                 # 10k items, synthetic store
    python benchmarks/probe_sweep.py --items 2000    # quicker
    python benchmarks/probe_sweep.py --organism clean --items 10000

Prints the sweep time, its ratio to the 60 s target, and the number of probes and fits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

TARGET_S = 60.0
SITES = [("vision.resid_post.0", 64), ("vision.resid_post.1", 64), ("projector.in", 64), ("projector.out", 96),
         ("llm.resid_post.0", 96), ("llm.resid_post.1", 96), ("llm.resid_post.2", 96), ("llm.resid_post.3", 96)]


def synthetic_items(n: int, seed: int = 0) -> list:
    """Items with scene graphs only (no images are rendered: the store is synthetic)."""
    import lvlm_probe as lp

    world = lp.SceneWorld(lp.WorldConfig(), seed=seed)
    rng = np.random.default_rng(seed)
    return [lp.Item(id=f"s{k:06d}", image=None, prompt="describe the image .", scene=world.sample_scene(rng))
            for k in range(n)]


def build_synthetic_store(path: str, items: list, seed: int = 0, shard_items: int = 2500) -> None:
    """Write a store with planted, depth-dependent class/colour/size signals (see module docstring)."""
    from lvlm_probe.capture.store import ActivationStore, key_name
    from lvlm_probe.data.world import CLASSES, COLORS, SIZES

    rng = np.random.default_rng(seed)
    grid, cell = 4, 16
    emb = {}
    for depth, (site, d) in enumerate(SITES):
        emb[site] = {
            "pos": rng.standard_normal((grid * grid, d)).astype(np.float32),
            "cls": rng.standard_normal((len(CLASSES), d)).astype(np.float32),
            "col": rng.standard_normal((len(COLORS), d)).astype(np.float32),
            "size": rng.standard_normal((len(SIZES), d)).astype(np.float32),
            "gain": 0.4 + 0.15 * depth,
        }
    cls_i = {c: k for k, c in enumerate(CLASSES)}
    col_i = {c: k for k, c in enumerate(COLORS)}
    size_i = {c: k for k, c in enumerate(SIZES)}
    model = {"name": "synthetic-probe-benchmark", "config_hash": "synthetic", "n_vision_layers": 2, "n_llm_layers": 4}
    settings = {"sites": [s for s, _ in SITES], "select": ["image_mean", "image_patches"]}
    store = ActivationStore.open_for_capture(path, model=model, settings=settings, overwrite=True)
    rr = torch.arange(grid * grid)
    index = torch.stack([torch.zeros_like(rr), torch.zeros_like(rr), torch.zeros_like(rr), rr // grid, rr % grid], 1)
    buf = []
    for it in items:
        occ = np.full(grid * grid, -1)
        for k, o in enumerate(it.scene.objects):
            cx, cy = o.center
            occ[int(cy // cell) * grid + int(cx // cell)] = k
        tensors, idx = {}, {}
        noise = rng.standard_normal((len(SITES), grid * grid, 96)).astype(np.float32)
        for j, (site, d) in enumerate(SITES):
            e = emb[site]
            x = e["pos"] + noise[j, :, :d]
            for p in np.flatnonzero(occ >= 0):
                o = it.scene.objects[occ[p]]
                x[p] += e["gain"] * (e["cls"][cls_i[o.name]] + e["col"][col_i[o.attributes["color"]]]
                                     + e["size"][size_i[o.attributes["size"]]])
            t = torch.from_numpy(x)
            tensors[key_name(site, "image_patches")] = t
            idx[key_name(site, "image_patches")] = index.clone()
            tensors[key_name(site, "image_mean")] = t.mean(0, keepdim=True)
        buf.append({"id": it.id, "tensors": tensors, "index": idx, "meta": {}})
        if len(buf) >= shard_items:
            store.append(buf)
            buf = []
    if buf:
        store.append(buf)


def organism_store(path: str, name: str, n: int) -> tuple[list, float]:
    import lvlm_probe as lp
    from lvlm_probe.organisms import ZOO

    model = lp.load(f"organism:{name}", device="cpu", dtype="float32")
    items = lp.SceneWorld(ZOO[name].world, seed=0).items(n, task="caption", seed=1)
    t0 = time.perf_counter()
    lp.capture(model, items, sites=["vision.resid_post.*", "projector.in", "projector.out", "llm.resid_post.*"],
               select=["image_mean", "image_patches"], out=path, batch_size=64, overwrite=True, progress=True)
    return items, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--organism", default=None, help="capture from organism:NAME instead of a synthetic store")
    ap.add_argument("--predictions", action="store_true", help="also build the out-of-fold predictions frame")
    ap.add_argument("--out", default=None, help="store directory (default: a temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lvlm_probe as lp
    from lvlm_probe.probing import probe_sweep, scene_labels

    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or os.path.join(tmp, "store")
        t0 = time.perf_counter()
        if args.organism:
            items, cap = organism_store(path, args.organism, args.items)
            print(f"captured {args.items} items from organism:{args.organism} in {cap:.1f} s")
        else:
            items = synthetic_items(args.items)
            build_synthetic_store(path, items)
            print(f"built a synthetic store of {args.items} items in {time.perf_counter() - t0:.1f} s")
        labels = scene_labels(items)
        store = lp.ActivationStore(path)
        fam = labels.groupby("family").agg(rows=("value", "size"), concepts=("concept", "nunique"))
        print(f"store: {len(store)} items, {len(store.sites())} sites; labels:\n{fam.to_string()}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            out = probe_sweep(store, labels, return_predictions=args.predictions, progress=False)
            dt = time.perf_counter() - t0
        res = out[0] if isinstance(out, tuple) else out
    fits = len(res) * 5 * 2
    print(f"\nprobe_sweep: {len(res)} probes ({fits} fits) over {res['site'].nunique()} sites × "
          f"{res['family'].nunique()} families on {args.items} items: {dt:.1f} s")
    print(f"ratio to the {TARGET_S:.0f} s target: {dt / TARGET_S:.2f} ({'within' if dt <= TARGET_S else 'OVER'} target)")
    summary = res.groupby(["depth", "site", "family"])["score"].mean().unstack("family")
    print("\nmean score per site and family:\n" + summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

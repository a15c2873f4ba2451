"""Capture memory: does ``lp.capture`` stream to disk in constant memory?

What is measured
----------------
A tiny random-init LLaVA (``build_tiny_llava`` defaults: 32 px images, 16 image tokens, 2 LLM
layers) captures ``--n`` items (default 1000; random 32x32 RGB images, made per item from a seed
so no image outlives its chunk) at the sites ``llm.resid_post.*`` and ``projector.out`` with the
selections ``image_mean``, ``last_prompt`` and ``image_patches`` (``last_prompt`` does not apply to
the vision-side ``projector.out`` and is skipped there), ``--batch-size`` 16 and ``--shard-items``
128, into one store directory.

The run is split into chunks (``--chunk``, default 250): capture is called on the growing item
lists 0..250, 0..500, 0..750, 0..1000 with the same ``out`` directory, so every call resumes the
store and skips the items already in it. Items already stored are passed without an image (resume
must skip them unread; the end check that every stored item has one image catches it if not), so
the script itself holds only one chunk of images at a time. The process's memory is sampled right after every
shard flush (``ActivationStore.append`` is wrapped, in this process only) and after every chunk.

How to read the output
----------------------
``rss`` is the resident set size at the moment of the sample (psutil; without psutil it falls
back to the peak), ``peak`` the highest RSS of the process so far (``getrusage``). Most of the
baseline (~0.9 GiB) is the imported libraries, not the model or the capture. If capture
streams correctly, both stay flat from the first flush on while the store on disk grows linearly
with the number of items; memory that grows with the item count means something accumulates
(buffers not released, a manifest or index held in memory and growing, ...). The final ``FLAT``
line compares the RSS growth between the first and the last flush with ``--max-growth-mb``.

Run: ``python benchmarks/capture_memory.py [--n 1000] [--chunk 250] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SITES = ["llm.resid_post.*", "projector.out"]
SELECT = ["image_mean", "last_prompt", "image_patches"]
PROMPT = "what is in the image ?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="items to capture (default 1000)")
    p.add_argument("--chunk", type=int, default=250, help="items added per capture call (default 250)")
    p.add_argument("--batch-size", type=int, default=16, help="capture batch size (default 16)")
    p.add_argument("--shard-items", type=int, default=128, help="items per shard (default 128)")
    p.add_argument("--out", type=Path, default=None, help="store directory (kept); default a temporary one")
    p.add_argument("--max-growth-mb", type=float, default=50.0,
                   help="RSS growth first->last flush allowed by the FLAT line (default 50)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.n, args.chunk, args.batch_size, args.shard_items) < 1:
        p.error("--n, --chunk, --batch-size and --shard-items must be >= 1")
    return args


def _rss_reader() -> tuple[str, Callable[[], float]]:
    """Current RSS in MiB (psutil), or the peak when psutil is missing."""
    try:
        import psutil
    except ImportError:
        return "getrusage peak (psutil missing)", peak_mb
    proc = psutil.Process()
    return "psutil", lambda: proc.memory_info().rss / 2**20


def peak_mb() -> float:
    """Peak RSS of this process so far in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def memory(rss_mb: Callable[[], float]) -> tuple[float, float]:
    """(rss, peak) in MiB; the kernel's high-water mark can lag the current RSS a little."""
    rss = rss_mb()
    return rss, max(rss, peak_mb())


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@contextlib.contextmanager
def sample_on_flush(on_flush: Callable[[object], None]) -> Iterator[None]:
    """Call ``on_flush(store)`` after every ``ActivationStore.append`` (a shard flush) in this process."""
    from lvlm_probe.capture.store import ActivationStore

    original = ActivationStore.append

    def append(self: ActivationStore, records: object) -> None:
        original(self, records)  # type: ignore[arg-type]
        on_flush(self)

    ActivationStore.append = append  # type: ignore[method-assign]
    try:
        yield
    finally:
        ActivationStore.append = original  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np
    import torch
    from PIL import Image
    from transformers.utils import logging as hf_logging

    import lvlm_probe as lp
    from lvlm_probe.models.tiny import build_tiny_llava

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rss_source, rss_mb = _rss_reader()

    def make_item(k: int, done: int) -> lp.Item:
        """Item k; items already in the store (k < done) get no image: resume skips them unread."""
        if k < done:
            return lp.Item(id=f"item-{k:06d}", image=None, prompt=PROMPT)
        rng = np.random.default_rng([args.seed, k])
        img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        return lp.Item(id=f"item-{k:06d}", image=img, prompt=PROMPT)

    with tempfile.TemporaryDirectory(prefix="lvlm_probe_mem_") as tmp:
        model_dir = build_tiny_llava(Path(tmp) / "model", seed=args.seed)
        model = lp.load(model_dir, device="cpu")
        out = args.out if args.out is not None else Path(tmp) / "store"
        n_params = sum(p.numel() for p in model.hf_model.parameters())
        n_hooks = len(model.adapter.expand_sites(SITES))

        print("capture memory benchmark")
        print(f"  model        tiny llava (build_tiny_llava defaults): {n_params:,} parameters, "
              f"{model.adapter.n_llm_layers} LLM layers")
        print(f"  capture      {args.n} items, sites {SITES} ({n_hooks} sites), select {SELECT}")
        print(f"               batch_size {args.batch_size}, shard_items {args.shard_items}, "
              f"chunks of {args.chunk}, out {out}")
        print(f"  memory       rss from {rss_source}; peak from getrusage")
        print(f"  torch        {torch.__version__}, threads {torch.get_num_threads()}")
        rss, peak = memory(rss_mb)
        print(f"  after load   rss {rss:.1f} MiB, peak {peak:.1f} MiB")
        print()

        flushes: list[float] = []

        def on_flush(store: object) -> None:
            rss, peak = memory(rss_mb)
            flushes.append(rss)
            n_items = len(store)  # type: ignore[arg-type]
            print(f"  flush {len(flushes):>3}  items {n_items:>6}  rss {rss:>8.1f} MiB  peak {peak:>8.1f} MiB  "
                  f"store {dir_mb(out):>7.2f} MiB")

        t_start = time.perf_counter()
        store = None
        with sample_on_flush(on_flush):
            ends = list(range(args.chunk, args.n, args.chunk)) + [args.n]
            for end in ends:
                t0 = time.perf_counter()
                done = len(store) if store is not None else 0
                items = [make_item(k, done) for k in range(end)]
                store = lp.capture(model, items, sites=SITES, select=SELECT, out=out, batch_size=args.batch_size,
                                   shard_items=args.shard_items, progress=False, overwrite=False)
                del items
                dt = time.perf_counter() - t0
                rss, peak = memory(rss_mb)
                print(f"chunk -> {end:>6} items  {dt:6.1f} s  rss {rss:>8.1f} MiB  peak {peak:>8.1f} MiB  "
                      f"store {dir_mb(out):>7.2f} MiB in {len(store.manifest['shards'])} shards"
                      f"  failed {len(store.failed)}")
        total = time.perf_counter() - t_start
        assert store is not None
        size = dir_mb(out)
        print()
        print(f"captured {len(store)} items ({len(store.failed)} failed) in {total:.1f} s "
              f"({len(store) / total:.0f} items/s)")
        print(f"store on disk {size:.2f} MiB ({size * 2**10 / max(len(store), 1):.1f} KiB per item), "
              f"{len(store.keys())} keys")
        probe = store.get("llm.resid_post.*", "image_mean")
        print(f"manifest.json {(out / 'manifest.json').stat().st_size / 2**10:.1f} KiB (rewritten at every flush)")
        print(f"read back llm.resid_post.* x image_mean: {tuple(probe.shape)}")
        n_images = store.item_meta()["n_images"]
        if len(store) != args.n or store.failed or not bool((n_images == 1).all()):
            print(f"ERROR: expected {args.n} items with one image each and no failures; "
                  f"got {len(store)}, failed: {dict(list(store.failed.items())[:3])}")
            return 1
        growth = flushes[-1] - flushes[0] if flushes else 0.0
        ok = growth <= args.max_growth_mb
        print(f"FLAT: {'PASS' if ok else 'FAIL'} (rss {flushes[0]:.1f} -> {flushes[-1]:.1f} MiB over "
              f"{len(flushes)} flushes, growth {growth:+.1f} MiB, limit {args.max_growth_mb:.0f} MiB; "
              f"final peak {memory(rss_mb)[1]:.1f} MiB)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

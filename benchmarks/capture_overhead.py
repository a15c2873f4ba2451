"""Capture overhead: how much slower is ``lp.capture`` than a plain Hugging Face forward?

What is measured
----------------
A random-init LLaVA (CLIP vision tower + Llama LM, ~30M parameters; ``--quick``: ~3M) is written
to a temporary directory with ``build_tiny_llava`` and loaded twice: once as a plain
``transformers.LlavaForConditionalGeneration`` with eager attention (the baseline) and once
through ``lvlm_probe.load`` (TransformerBridge). ``--family llava_next`` builds the same sizes as a
LLaVA-NeXT (``build_tiny_llava_next``, pinpoints of the released checkpoints scaled to 224 px: a
square image gives a base view and 2 crops, 528 image tokens) and times its HF class instead;
``--family llava_onevision`` the same for LLaVA-OneVision (``build_tiny_llava_onevision``: SigLIP, Qwen2 LM,
``anyres_max_9``, which does not shrink this image: 256 + 16·17 = 528 image tokens, as llava_next); ``--family
idefics3`` builds an Idefics3 (``build_tiny_idefics3``: 224-px views, a square image upsampled to 448 px gives
2 x 2 crops + a global view of 8 x 8 tokens each after the pixel shuffle, 320 image tokens); the other families
(``gemma3``, ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``) are sized to 256 image tokens per image (each family's
settings: ``BENCH_SHAPES`` in ``lvlm_probe/models/tiny.py``; ``--family`` takes any family of ``TINY_BUILDERS``).
One batch of ``--batch-size`` items (random
224x224 RGB images, 256 image tokens each for llava, prompt "what is in the image ?") is timed with each
variant. Every variant runs once as a warm-up, then ``--repeats`` times; the variants are run
round-robin (one of each per repeat) so that a change in machine load hits them all alike, and
the table reports the median (with min and max) of each.

Rows (all under ``torch.no_grad()``, ``use_cache=False``, on CPU, default thread count):

1. ``HF eager forward`` - the baseline: ``hf(input_ids, attention_mask, pixel_values)``.
2. ``HF eager + hidden_states`` - the same with ``output_hidden_states=True``, the cheapest way
   to get every layer's residual stream with plain HF.
3. ``bridge forward, no hooks`` - the bridge-wrapped HF model called directly without hooks:
   the fixed cost of TransformerBridge's wrapper modules.
4. ``bridge run_with_cache (all hooks)`` - ``model.bridge.run_with_cache(...)``, caching every
   hook point (TransformerLens' usual way of reading activations).
5. ``capture forward-only`` - the forward ``lp.capture`` runs (``hf_model(...,
   logits_to_keep=1)`` inside ``model.hooks``) with the very hooks capture installs for
   ``llm.resid_post.*`` x (``image_mean``, ``last_prompt``), plus the copy of the selected rows
   to CPU; no preprocessing and no disk (uses capture's private recorder; skipped if absent).
6. ``lp.capture (whole call)`` - ``lp.capture(model, items, ...)`` for the same items streamed to
   a temporary store with ``overwrite=True``: preprocessing, forward, pooling, shard + manifest
   write (with fsync) included.
7. ``model.prepare only`` - tokenisation + image preprocessing of the batch, to show how much of
   row 6 is input preparation rather than forward.

How to read the ratios
----------------------
Each ratio is that row's median divided by row 1's median from the same run, so 1.00 means "as
fast as plain HF eager" and 1.25 means 25% slower. ``ratio(min)`` divides the fastest runs
instead: on a shared, noisy machine it is often the steadier estimate of the intrinsic cost
(a max far above the median means another process took the cores for a while). Ratios compare
like with like only within one run; absolute milliseconds depend on the machine and its load. Rows 3 and 5 separate the
cost of the bridge wrappers from the cost of the capture hooks; row 6 minus row 5 is roughly
preprocessing (row 7) plus the disk write. The final ``TARGET`` line checks row 6 against the
goal ``capture <= 1.10x HF eager``. A sanity line also checks that capture stored the same
numbers HF returns (layer-0 residual at the last prompt position).

``kernel ms`` is the median CPU time the process spent in the kernel during the call (``getrusage``
``ru_stime``; 0 where ``resource`` is missing). On CPU it is almost all minor page faults: glibc
serves every allocation above its 32 MiB mmap ceiling with a fresh ``mmap`` that the kernel zeroes
page by page, and frees it with ``munmap``. A family whose forward makes such tensors pays it in
every row alike (Qwen2.5-VL's full-attention vision block: per image a ``[heads, 1024, 1024]``
float32 score matrix, 32 MiB, about 0.4-0.5 s of a 4-5 s forward here), and how much of the
smaller allocations also fault depends on the heap state the previous call left, so such a
family's ratios scatter more from run to run. Row 2 runs the baseline's own computation (plus
returning hidden states it computes anyway), so its distance from 1.00 shows how far one run's
ratios can move by noise alone.

Run: ``python benchmarks/capture_overhead.py [--quick] [--family F] [--repeats N] [--batch-size B]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: build_tiny_llava settings: ~30M parameters (full) and ~3M (quick); 224 px / 14 px patches
#: give 256 image tokens per image in both.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "full": {"image_size": 224, "patch_size": 14, "vision_hidden": 256, "vision_layers": 6, "vision_heads": 8,
             "text_hidden": 512, "text_layers": 10, "text_heads": 8, "text_kv_heads": 8},
    "quick": {"image_size": 224, "patch_size": 14, "vision_hidden": 128, "vision_layers": 2, "vision_heads": 4,
              "text_hidden": 256, "text_layers": 4, "text_heads": 4, "text_kv_heads": 4},
}
PROMPT = "what is in the image ?"
SITES = ["llm.resid_post.*"]
SELECT = ["image_mean", "last_prompt"]
TARGET_RATIO = 1.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lvlm_probe.models.tiny import TINY_BUILDERS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant after one warm-up (default 5)")
    p.add_argument("--batch-size", type=int, default=8, help="items in the timed batch (default 8)")
    p.add_argument("--quick", action="store_true", help="~3M-parameter model for a smoke run (default ~30M)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and images")
    p.add_argument("--family", choices=sorted(TINY_BUILDERS), default="llava",
                   help="architecture of the tiny model (default llava)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when the TARGET line fails")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        p.error("--repeats and --batch-size must be >= 1")
    return args


def builder_kwargs(size: str, family: str) -> dict:
    """MODEL_SIZES[size] and the family's ``BENCH_SHAPES`` settings, less what the family's shape dataclass
    (``TINY_SHAPES``) has no field for (the Qwen builders size images in pixels, not ``image_size``)."""
    from dataclasses import fields

    from lvlm_probe.models.tiny import BENCH_SHAPES, TINY_SHAPES

    accepted = {f.name for f in fields(TINY_SHAPES[family])}
    kw = {**MODEL_SIZES[size], **BENCH_SHAPES[family]}
    return {k: v for k, v in kw.items() if k in accepted}


def _kernel_seconds() -> float:
    """CPU seconds this process has spent in the kernel so far (0.0 where ``resource`` is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def time_round_robin(variants: list[tuple[str, Callable[[], object]]], repeats: int
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One warm-up call of each variant, then ``repeats`` rounds of one timed call each: wall seconds and, per
    call, the kernel CPU seconds spent in it (page faults, mostly)."""
    for _, fn in variants:
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    kernel: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:
            gc.collect()
            k0 = _kernel_seconds()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            kernel[name].append(_kernel_seconds() - k0)
    return times, kernel


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before parse_args imports lvlm_probe (and with it the hub)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)

    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from transformers.utils import logging as hf_logging

    import lvlm_probe as lp
    from lvlm_probe.models.tiny import TINY_BUILDERS

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    size = "quick" if args.quick else "full"
    B = args.batch_size

    with tempfile.TemporaryDirectory(prefix="lvlm_probe_bench_") as tmp:
        tmp_path = Path(tmp)
        builder = TINY_BUILDERS[args.family]
        model_dir = builder(tmp_path / "model", seed=args.seed, **builder_kwargs(size, args.family))
        model = lp.load(model_dir, device="cpu")
        hf = type(model.hf_model).from_pretrained(model_dir, attn_implementation="eager").eval()
        n_params = sum(p.numel() for p in hf.parameters())

        rng = np.random.default_rng(args.seed)
        side = MODEL_SIZES[size]["image_size"]
        images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(B)]
        items = [lp.Item(id=str(k), image=im, prompt=PROMPT) for k, im in enumerate(images)]
        batch = model.prepare(images, [PROMPT] * B)
        ids, inputs = batch.input_ids, batch.model_inputs()
        store_dir = tmp_path / "store"

        print("capture overhead benchmark")
        print(f"  model          tiny {args.family} ({size}): {n_params:,} parameters ({n_params / 1e6:.1f}M), "
              f"{model.adapter.n_vision_layers} vision + {model.adapter.n_llm_layers} LLM layers")
        print(f"  batch          {B} items x {ids.shape[1]} tokens ({batch.n_image_tokens[0]} image tokens each)")
        print(f"  capture        sites {SITES} -> {len(model.adapter.expand_sites(SITES))} hooks, select {SELECT}")
        print(f"  torch          {torch.__version__}, threads {torch.get_num_threads()} "
              f"(interop {torch.get_num_interop_threads()}), cpu count {os.cpu_count()}")
        print(f"  transformers   {transformers.__version__}, lvlm_probe {lp.__version__}, "
              f"python {platform.python_version()}")
        print(f"  timing         median of {args.repeats} round-robin repeats after 1 warm-up")
        print()

        @torch.no_grad()
        def hf_eager() -> object:
            return hf(input_ids=ids, **inputs, use_cache=False)

        @torch.no_grad()
        def hf_hidden() -> object:
            return hf(input_ids=ids, **inputs, use_cache=False, output_hidden_states=True)

        @torch.no_grad()
        def bridge_plain() -> object:
            return model.hf_model(input_ids=ids, **inputs, use_cache=False)

        @torch.no_grad()
        def bridge_cache() -> object:
            return model.bridge.run_with_cache(ids, **inputs)

        def capture_call() -> object:
            store = lp.capture(model, items, sites=SITES, select=SELECT, out=store_dir, batch_size=B,
                               progress=False, overwrite=True)
            # capture isolates failures instead of raising: a "fast" run that stored nothing is no result
            if len(store) != B or store.failed:
                raise RuntimeError(f"capture stored {len(store)}/{B} items; failed: {store.failed}")
            return store

        def prepare_only() -> object:
            return model.prepare(images, [PROMPT] * B)

        variants: list[tuple[str, Callable[[], object]]] = [
            ("HF eager forward (baseline)", hf_eager),
            ("HF eager + output_hidden_states", hf_hidden),
        ]
        if getattr(model, "backend", "bridge") == "bridge":  # the forward-hook fallback has no run_with_cache
            variants += [("bridge forward, no hooks", bridge_plain), ("bridge run_with_cache (all hooks)", bridge_cache)]
        else:
            print(f"note: {args.family} runs on forward hooks (no TransformerBridge): bridge rows skipped\n")
        fwd_only = _capture_forward_only(model, batch)
        if fwd_only is not None:
            variants.append(("capture forward-only (hooks+copy)", fwd_only))
        else:
            print("note: capture forward-only skipped (capture internals not importable)\n")
        variants += [("lp.capture (whole call)", capture_call), ("model.prepare only", prepare_only)]

        times, kernel = time_round_robin(variants, args.repeats)

        # sanity: capture stored what HF computes (layer-0 output at the last prompt position)
        hs = hf_hidden().hidden_states
        store = lp.ActivationStore(store_dir)
        got = store.get("llm.resid_post.0", "last_prompt", items=[it.id for it in items])
        diff = (got.float() - hs[1][:, -1].float()).abs().max().item()

    base = statistics.median(times[variants[0][0]])
    width = max(len(n) for n, _ in variants) + 4
    base_min = min(times[variants[0][0]])
    print(f"{'#':>2} {'variant':<{width}}{'median ms':>11}{'min ms':>10}{'max ms':>10}{'ratio':>8}"
          f"{'ratio(min)':>12}{'kernel ms':>11}")
    for k, (name, _) in enumerate(variants, 1):
        ts = times[name]
        med = statistics.median(ts)
        print(f"{k:>2} {name:<{width}}{med * 1e3:>11.1f}{min(ts) * 1e3:>10.1f}{max(ts) * 1e3:>10.1f}"
              f"{med / base:>7.2f}x{min(ts) / base_min:>11.2f}x{statistics.median(kernel[name]) * 1e3:>11.1f}")
    print()
    print(f"check: capture vs HF hidden_states, llm.resid_post.0 last_prompt max |diff| = {diff:.2e} "
          f"({'ok' if diff < 1e-4 else 'MISMATCH'})")
    ratio = statistics.median(times["lp.capture (whole call)"]) / base
    ok = ratio <= TARGET_RATIO
    print(f"TARGET capture <= {TARGET_RATIO:.2f}x HF eager: {'PASS' if ok else 'FAIL'} (ratio {ratio:.2f})")
    return 1 if (args.strict and not ok) else 0


def _capture_forward_only(model: object, batch: object) -> Callable[[], object] | None:
    """The forward ``lp.capture`` runs for one batch, with its own hooks (None if its internals moved)."""
    import torch

    try:
        from lvlm_probe.capture.run import _Plan, _Recorder, validate_selections
    except ImportError:
        return None
    ad = model.adapter  # type: ignore[attr-defined]
    pairs = validate_selections(ad.expand_sites(SITES), SELECT)
    by_hook: dict = {}
    for site, sel in pairs:
        by_hook.setdefault(ad.hook_name(site), (site, []))[1].append(sel)
    plan = _Plan([s for s, _ in pairs], by_hook, None)

    def run() -> object:
        rec = _Recorder(model, batch, plan, model.dtype)  # type: ignore[attr-defined]
        with model.hooks([(h, rec.hook_fn(h)) for h in by_hook]), torch.no_grad():  # type: ignore[attr-defined]
            model.hf_model(input_ids=batch.input_ids, **batch.model_inputs(),  # type: ignore[attr-defined]
                           use_cache=False, logits_to_keep=1)
        return rec.records(None, None)

    return run


if __name__ == "__main__":
    sys.exit(main())

"""One-command GPU check: gpu tests, capture overhead at LLaVA-1.5-7B's shape, half-precision stores, torchrun.

Run ``python benchmarks/gpu_check.py`` on a machine with one or more CUDA devices (about 8 minutes on
one H200; it needs about 30 GB of GPU memory, 30 GB of RAM and 15 GB of free disk in the temporary
directory). ``--cpu-smoke`` runs the same functions at a tiny shape on the CPU (CI; under a minute).

Phases
------
1. ``gpu tests`` - ``pytest -m gpu tests/test_gpu.py`` in a subprocess; passed / failed / skipped
   counts. With ``--cpu-smoke`` the subprocess sees no CUDA device, so they are reported skipped.
2. ``overhead`` - a random-init LLaVA of LLaVA-1.5-7B's shape (``LLAVA_1_5_7B_SHAPE``: Llama-2-7B +
   CLIP ViT-L/14-336, 576 image tokens, 7.06e9 parameters) is built directly on the GPU in bfloat16
   and written to a temporary directory, then loaded twice from it: through ``lvlm_probe.load`` (the
   path users take) and as a plain ``transformers.LlavaForConditionalGeneration`` with
   ``attn_implementation="eager"`` (the baseline). One batch of 16 random 336 px images is timed
   round-robin like ``benchmarks/capture_overhead.py`` (one warm-up, then ``--repeats`` rounds of
   one call per variant, medians): HF eager forward (full logits, the baseline), HF eager with
   ``logits_to_keep=1``, capture forward-only (capture's own hooks for ``llm.resid_post.*`` x
   ``image_mean``, ``last_prompt`` plus the copy to the CPU; no preprocessing, no disk), and the whole
   ``lp.capture`` call (preprocessing, forward, pooling, shard + manifest write with fsync). The
   target, ``capture <= 1.05x HF eager``, is judged on the whole call. Tokens/s is batch tokens
   (image tokens included) over the median time; peak GPU memory is ``max_memory_allocated`` over a
   row's calls (reset before each call), with both models' weights resident. A sanity row checks
   that the stored ``last_prompt`` residuals equal HF's hidden states (layers 0, 15 and 30 at the 7B
   shape; HF's last hidden state is after the final norm, so the last layer is not compared).
3. ``stores`` - a small model (about 30M parameters on the GPU) loaded in float32 captures a few items
   into a float32 store, the reference; the same model into float16 and bfloat16 stores (``dtype=``),
   and the model loaded in float16 and in bfloat16 (store in its own dtype). Each row checks the
   stored dtype and the normalised error ``max |x - ref| / max |ref|`` over every stored key.
4. ``distributed`` - with two or more CUDA devices (or always with ``--cpu-smoke``, on the CPU with
   gloo): ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m lvlm_probe capture
   ...`` on phase 3's model (float32) and items, compared with ``lp.capture`` of the same items in this
   process: same item ids, tensors equal (normalised error <= 1e-5; batches differ between the runs).
   A failing command is a FAIL row with its one-line error. With one CUDA device the phase is skipped.
   Two ranks that ignore each other could also leave an equal store (one captures, the other resumes the
   finished store), so the row also requires shards written by both ranks (``shards/rank-00000-*`` and
   ``shards/rank-00001-*``: each rank of a distributed capture names its own).

The script ends with one table (phase, metric, value, target, verdict). Verdicts: PASS, FAIL, SKIP
(could not run here), INFO (measured, no target; with ``--cpu-smoke`` the speed targets are INFO
since a tiny CPU model says nothing about them). The exit status is 1 when any row FAILs.
``--json FILE`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's lvlm_probe, and capture_overhead beside this file
sys.path.insert(1, str(Path(__file__).resolve().parent))

PROMPT = "what is in the image ?"
SITES = ["llm.resid_post.*"]
SELECT = ["image_mean", "last_prompt"]
#: capture_overhead's ~30M-parameter shape: phase 3 and 4's model on the GPU
SMALL_SHAPE: dict[str, int] = {
    "image_size": 224, "patch_size": 14, "vision_hidden": 256, "vision_layers": 6, "vision_heads": 8,
    "text_hidden": 512, "text_layers": 10, "text_heads": 8, "text_kv_heads": 8,
}
#: normalised error allowed per store dtype (rounding to the dtype: 2^-11 for float16, 2^-8 for bfloat16)
STORE_TOL = {"float16": 1e-3, "bfloat16": 8e-3}
#: ... and per model dtype (the whole forward in half precision against the float32 forward)
MODEL_TOL = {"float16": 1e-2, "bfloat16": 5e-2}
SANITY_TOL = 1e-2  # captured vs HF hidden states, both bfloat16 from the same kernels
DIST_TOL = 1e-5


@dataclass
class Mode:
    """What one run measures: device, shapes, batch, repeats, time budgets (seconds per phase)."""

    name: str
    device: str
    dtype: str
    shape: dict
    batch: int
    repeats: int
    small_shape: dict
    n_items: int
    budgets: dict[str, float]
    judged: bool  # speed targets judged (the GPU run) or reported as INFO (the smoke run)


def gpu_mode(repeats: int) -> Mode:
    """The GPU run: LLaVA-1.5-7B's shape in bfloat16, batch 16, phase 3/4 on a ~30M model; 8 minutes in all."""
    from lvlm_probe.models.tiny import LLAVA_1_5_7B_SHAPE

    return Mode("gpu", "cuda", "bfloat16", dict(LLAVA_1_5_7B_SHAPE), 16, repeats, SMALL_SHAPE, 8,
                {"gpu tests": 90, "overhead": 270, "stores": 45, "distributed": 75, "total": 480}, True)


def smoke_mode(repeats: int) -> Mode:
    """The CPU smoke run: build_tiny_llava's shape (4 text layers), batch 2; a minute in all."""
    return Mode("cpu-smoke", "cpu", "bfloat16", {"text_layers": 4}, 2, repeats, {}, 4,
                {"gpu tests": 15, "overhead": 15, "stores": 10, "distributed": 30, "total": 60}, False)


@dataclass
class Row:
    """One line of the final table."""

    phase: str
    metric: str
    value: str
    target: str = ""
    verdict: str = "INFO"


@dataclass
class Workspace:
    """Shared between phases: the temporary folder, phase 3's model directory, items file and float32 model."""

    tmp: Path
    mode: Mode
    small_dir: Path | None = None
    items_file: Path | None = None
    ref_model: object = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--cpu-smoke``, ``--repeats``, ``--json FILE``, ``--tmp DIR``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="same code path, tiny shape, CPU only (CI)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds after one warm-up (default 5; smoke 2)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the table's rows as JSON")
    p.add_argument("--tmp", default=None,
                   help="folder for the temporary model and stores (created if missing; default: system temp)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the four phases in a temporary folder, print the table.

    Returns
    -------
    int
        0 when no row FAILs, 1 when one does, 2 without a CUDA device (and no ``--cpu-smoke``).
    """
    t_start = time.perf_counter()  # the total includes importing torch and transformers
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --cpu-smoke for the CPU smoke run", file=sys.stderr)
        return 2
    mode = smoke_mode(args.repeats or 2) if args.cpu_smoke else gpu_mode(args.repeats or 5)
    phases: list[tuple[str, Callable[[Workspace], list[Row]]]] = [
        ("gpu tests", phase_gpu_tests), ("overhead", phase_overhead), ("stores", phase_stores),
        ("distributed", phase_distributed)]
    rows: list[Row] = []
    if args.tmp:
        Path(args.tmp).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lvlm_probe_gpu_check_", dir=args.tmp) as tmp:
        ws = Workspace(Path(tmp), mode)
        for k, (name, fn) in enumerate(phases, 1):
            rows += run_phase(k, len(phases), name, fn, ws)
    total = time.perf_counter() - t_start
    budget = mode.budgets["total"]
    rows.append(Row("total", "wall time", f"{total:.0f} s", f"<= {budget:.0f} s",
                    "PASS" if total <= budget else "FAIL"))
    print_table(rows, mode)
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": mode.name, "rows": [asdict(r) for r in rows]}, indent=1))
    return 1 if any(r.verdict == "FAIL" for r in rows) else 0


def run_phase(k: int, n: int, name: str, fn: Callable[[Workspace], list[Row]], ws: Workspace) -> list[Row]:
    """Run one phase; an exception becomes a FAIL row with its one-line message (the next phase still runs)."""
    budget = ws.mode.budgets[name]
    print(f"[{k}/{n}] {name} (budget {budget:.0f} s)", flush=True)
    t0 = time.perf_counter()
    try:
        rows = fn(ws)
    except Exception as err:  # noqa: BLE001 - the table reports it; the other phases still run
        rows = [Row(name, "error", f"{type(err).__name__}: {one_line(str(err))}", "no error", "FAIL")]
    dt = time.perf_counter() - t0
    print(f"[{k}/{n}] {name} done in {dt:.1f} s", flush=True)
    free_memory()
    return rows + [Row(name, "wall time", f"{dt:.1f} s", f"budget {budget:.0f} s", "INFO")]


def count(n: int) -> str:
    """``7.06e9`` or ``1.2e5``: a parameter count in the table."""
    return f"{n:.2e}".replace("e+0", "e")


def one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def free_memory() -> None:
    """Collect garbage and return cached CUDA blocks, between phases."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- phase 1


def phase_gpu_tests(ws: Workspace) -> list[Row]:
    """``pytest -m gpu tests/test_gpu.py`` in a subprocess; the counts from pytest's summary line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if ws.mode.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run: the same command, no device
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider"]
    timeout = 2 * ws.mode.budgets["gpu tests"]
    try:
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Row("gpu tests", "pytest -m gpu", f"timed out after {timeout:.0f} s", "all pass", "FAIL")]
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for num, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", res.stdout.splitlines()[-1] if
                                res.stdout.strip() else ""):
        counts["error" if word.startswith("error") else word] += int(num)
    value = ", ".join(f"{v} {k}" for k, v in counts.items())
    if counts["failed"] or counts["error"] or res.returncode not in (0, 5):
        why = one_line(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr)
        return [Row("gpu tests", "pytest -m gpu", f"{value} (exit {res.returncode}: {why})", "all pass", "FAIL")]
    verdict = "PASS" if counts["passed"] else "SKIP"
    note = "" if counts["passed"] else " (no CUDA device)"
    return [Row("gpu tests", "pytest -m gpu", value + note, "all pass", verdict)]


# ---------------------------------------------------------------------------------------------- phase 2


def phase_overhead(ws: Workspace) -> list[Row]:
    """Build, load twice, time round-robin, check the stored values; rows of ratios, tokens/s and memory."""
    import torch

    mode = ws.mode
    t0 = time.perf_counter()
    model_dir = build_model(ws.tmp / "llava_big", mode.shape, mode.dtype, mode.device)
    free_memory()  # the built copy's device memory, before two copies are loaded
    t_build = time.perf_counter() - t0
    model, hf = load_pair(model_dir, mode.device, mode.dtype)
    t_load = time.perf_counter() - t0 - t_build
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"  model {count(n_params)} parameters, {mode.dtype}; built in {t_build:.0f} s, both loaded in "
          f"{t_load:.0f} s", flush=True)
    variants, batch, items = overhead_variants(model, hf, mode, ws.tmp / "overhead_store")
    resident = torch.cuda.memory_allocated() if mode.device == "cuda" else 0
    times, peaks = time_round_robin(variants, mode.repeats, mode.device)
    sanity = sanity_row(model, hf, batch, items, ws.tmp / "overhead_store")
    rows = overhead_rows(times, peaks, resident, tokens=batch.input_ids.numel(), mode=mode)
    rows.insert(0, Row("overhead", "model", f"{count(n_params)} parameters, {mode.dtype}, batch {mode.batch} x "
                       f"{batch.input_ids.shape[1]} tokens", "", "INFO"))
    del model, hf, variants
    free_memory()
    import shutil

    shutil.rmtree(model_dir, ignore_errors=True)  # ~14 GB at the 7B shape
    return rows + [sanity]


def build_model(out: Path, shape: dict, dtype: str, device: str) -> Path:
    """A random-init LLaVA of ``shape`` (``{}``: build_tiny_llava's defaults) written to ``out``, built on ``device``."""
    import torch

    from lvlm_probe.models.tiny import build_tiny_llava

    return build_tiny_llava(out, **shape, dtype=getattr(torch, dtype), init_device=device, seed=0)


def load_pair(model_dir: Path, device: str, dtype: str) -> tuple[object, object]:
    """The same directory through ``lvlm_probe.load`` and as plain HF eager (the baseline).

    The baseline is loaded as ``lp.load`` loads (``from_pretrained``, then ``.to(device)``), without a
    ``device_map``, so no accelerate hook can slow it down.
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    import lvlm_probe as lp

    model = lp.load(model_dir, device=device, dtype=dtype)
    hf = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                       attn_implementation="eager")
    return model, hf.to(device).eval()


def overhead_variants(model, hf, mode: Mode, store_dir: Path) -> tuple[list[tuple[str, Callable[[], object]]], object,
                                                                          list]:
    """The timed calls on one batch of ``mode.batch`` random images: HF eager (twice), capture (twice)."""
    import numpy as np
    import torch
    from PIL import Image

    import lvlm_probe as lp
    from capture_overhead import _capture_forward_only

    rng = np.random.default_rng(0)
    side = model.adapter.hf_config.vision_config.image_size
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(mode.batch)]
    items = [lp.Item(id=str(k), image=im, prompt=PROMPT) for k, im in enumerate(images)]
    batch = model.prepare(images, [PROMPT] * mode.batch)
    ids, inputs = batch.input_ids, batch.model_inputs()

    @torch.no_grad()
    def hf_eager() -> object:
        return hf(input_ids=ids, **inputs, use_cache=False)

    @torch.no_grad()
    def hf_keep1() -> object:
        return hf(input_ids=ids, **inputs, use_cache=False, logits_to_keep=1)

    def capture_call() -> object:
        store = lp.capture(model, items, sites=SITES, select=SELECT, out=store_dir, batch_size=mode.batch,
                           progress=False, overwrite=True)
        if len(store) != mode.batch or store.failed:  # a fast run that stored nothing is no result
            raise RuntimeError(f"capture stored {len(store)}/{mode.batch} items; failed: {store.failed}")
        return store

    fwd_only = _capture_forward_only(model, batch)
    if fwd_only is None:
        raise RuntimeError("capture internals moved: benchmarks/capture_overhead.py's forward-only row needs updating")
    return [("HF eager forward", hf_eager), ("HF eager, logits_to_keep=1", hf_keep1),
            ("capture forward-only", fwd_only), ("lp.capture whole call", capture_call)], batch, items


def time_round_robin(variants: list[tuple[str, Callable[[], object]]], repeats: int,
                     device: str) -> tuple[dict[str, list[float]], dict[str, int]]:
    """One warm-up call per variant, then ``repeats`` rounds of one timed call each.

    Returns
    -------
    times : dict
        Seconds per call (CUDA synchronised before and after).
    peaks : dict
        Peak allocated GPU bytes over the variant's calls (0 on the CPU).
    """
    import torch

    cuda = device == "cuda"
    for _, fn in variants:
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    peaks: dict[str, int] = {name: 0 for name, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:
            gc.collect()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            if cuda:
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
    return times, peaks


def overhead_rows(times: dict[str, list[float]], peaks: dict[str, int], resident: int, *, tokens: int,
                  mode: Mode) -> list[Row]:
    """Medians, ratios to HF eager, tokens/s and peak memory as table rows; the target on the whole call."""
    med = {k: statistics.median(v) for k, v in times.items()}
    base, keep1 = med["HF eager forward"], med["HF eager, logits_to_keep=1"]
    rows = [Row("overhead", f"{name}: median time", f"{med[name] * 1e3:.1f} ms (min {min(ts) * 1e3:.1f}, "
                f"max {max(ts) * 1e3:.1f}; {tokens / med[name]:,.0f} tokens/s)") for name, ts in times.items()]
    whole = med["lp.capture whole call"] / base
    target = "<= 1.05x"
    verdict = ("PASS" if whole <= 1.05 else "FAIL") if mode.judged else "INFO"
    rows.append(Row("overhead", "lp.capture whole call / HF eager", f"{whole:.3f}x", target, verdict))
    rows.append(Row("overhead", "capture forward-only / HF eager", f"{med['capture forward-only'] / base:.3f}x"))
    rows.append(Row("overhead", "lp.capture whole call / HF eager logits_to_keep=1",
                    f"{med['lp.capture whole call'] / keep1:.3f}x"))
    for name in ("HF eager forward", "lp.capture whole call"):
        if mode.device == "cuda":
            value = f"{peaks[name] / 2**30:.1f} GiB ({(peaks[name] - resident) / 2**30:.1f} above the " \
                    f"{resident / 2**30:.1f} GiB resident)"
        else:
            value = "n/a on the CPU"
        rows.append(Row("overhead", f"{name}: peak GPU memory", value))
    return rows


def sanity_row(model, hf, batch, items: list, store_dir: Path) -> Row:
    """Stored ``last_prompt`` residuals against HF's ``output_hidden_states`` at three layers.

    HF's ``hidden_states[l + 1]`` is the output of layer ``l``, except the last entry, which is after the
    final norm: layers 0, (L - 1) // 2 and L - 2 are compared.
    """
    import torch

    import lvlm_probe as lp

    with torch.no_grad():
        hs = hf(input_ids=batch.input_ids, **batch.model_inputs(), use_cache=False,
                output_hidden_states=True).hidden_states
    store = lp.ActivationStore(store_dir)
    ids = [it.id for it in items]
    n_layers = len(hs) - 1
    layers = sorted({0, (n_layers - 1) // 2, max(n_layers - 2, 0)})
    worst = 0.0
    for layer in layers:
        got = store.get(f"llm.resid_post.{layer}", "last_prompt", items=ids)
        worst = max(worst, normalised_error(got, hs[layer + 1][:, -1].cpu()))
    del hs
    verdict = "PASS" if worst <= SANITY_TOL else "FAIL"
    return Row("overhead", f"stored = HF hidden states (layers {', '.join(map(str, layers))})",
               f"normalised error {worst:.1e}", f"<= {SANITY_TOL:.0e}", verdict)


def normalised_error(x, ref) -> float:
    """``max |x - ref| / max |ref|`` (float32; NaN or inf counts as infinitely wrong)."""
    import torch

    x, ref = x.float(), ref.float()
    if x.shape != ref.shape or not torch.isfinite(x).all():
        return float("inf")
    scale = ref.abs().max().item() or 1.0
    return (x - ref).abs().max().item() / scale


# ---------------------------------------------------------------------------------------------- phase 3


def phase_stores(ws: Workspace) -> list[Row]:
    """float16 / bfloat16 stores of a float32 model, and float16 / bfloat16 models, against a float32 store."""
    import lvlm_probe as lp

    small_model(ws)
    items = lp.read_items(ws.items_file)
    ref = capture_to(ws.ref_model, items, ws.tmp / "store_f32", None)
    rows = []
    for dt in ("float16", "bfloat16"):
        store = capture_to(ws.ref_model, items, ws.tmp / f"store_{dt}", dt)
        rows.append(store_row(f"{dt} store of a float32 model", store, ref, dt, STORE_TOL[dt]))
    for dt in ("float16", "bfloat16"):
        model = lp.load(ws.small_dir, device=ws.mode.device, dtype=dt)
        store = capture_to(model, items, ws.tmp / f"store_model_{dt}", None)
        rows.append(store_row(f"{dt} model (store in its dtype)", store, ref, dt, MODEL_TOL[dt]))
        del model
        free_memory()
    return rows


def small_model(ws: Workspace) -> None:
    """Phase 3 and 4's model directory, items file (images on disk) and float32 model, made once."""
    import numpy as np
    from PIL import Image

    import lvlm_probe as lp

    if ws.ref_model is not None:
        return
    ws.small_dir = build_model(ws.tmp / "llava_small", ws.mode.small_shape, "float32", ws.mode.device)
    ws.ref_model = lp.load(ws.small_dir, device=ws.mode.device, dtype="float32")
    side = ws.ref_model.adapter.hf_config.vision_config.image_size
    rng = np.random.default_rng(1)
    lines = []
    for k in range(ws.mode.n_items):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(ws.tmp / f"img{k}.png")
        lines.append(json.dumps({"id": f"item{k}", "image": f"img{k}.png", "prompt": PROMPT}))
    ws.items_file = ws.tmp / "items.jsonl"
    ws.items_file.write_text("\n".join(lines) + "\n", encoding="utf-8")


def capture_to(model, items: list, out: Path, dtype: str | None):
    """``lp.capture`` of phase 3/4's sites and selections (batch 2), refusing a store with failed items."""
    import lvlm_probe as lp

    store = lp.capture(model, items, sites=SITES, select=SELECT, out=out, batch_size=2, dtype=dtype,
                       progress=False, overwrite=True)
    if store.failed or len(store) != len(items):
        raise RuntimeError(f"capture stored {len(store)}/{len(items)} items; failed: {store.failed}")
    return store


def store_row(metric: str, store, ref, dtype: str, tol: float) -> Row:
    """Stored dtype and the worst normalised error over every (site, selection) against ``ref``."""
    ids = ref.item_ids
    got_dtypes = {str(store.get(s, sel, items=ids[:1]).dtype).replace("torch.", "") for s, sel in store.keys()}
    worst = max(normalised_error(store.get(s, sel, items=ids), ref.get(s, sel, items=ids)) for s, sel in ref.keys())
    ok = got_dtypes == {dtype} and worst <= tol and sorted(store.item_ids) == sorted(ids)
    return Row("stores", metric, f"stored {', '.join(sorted(got_dtypes))}; normalised error {worst:.1e}",
               f"{dtype}; <= {tol:.0e}", "PASS" if ok else "FAIL")


# ---------------------------------------------------------------------------------------------- phase 4


def phase_distributed(ws: Workspace) -> list[Row]:
    """``torchrun --nproc-per-node 2 -m lvlm_probe capture`` against a single-process ``lp.capture``."""
    import torch

    import lvlm_probe as lp

    metric, target = "torchrun 2 ranks = 1 process", f"both ranks wrote; same ids, <= {DIST_TOL:.0e}"
    if ws.mode.device == "cuda" and torch.cuda.device_count() < 2:
        return [Row("distributed", metric, f"needs 2 CUDA devices, found {torch.cuda.device_count()}", target, "SKIP")]
    small_model(ws)
    out = ws.tmp / "store_dist"
    backend = "nccl" if ws.mode.device == "cuda" else "gloo"
    err = run_torchrun(ws, out, backend)
    if err:
        return [Row("distributed", metric, f"exit {err}", target, "FAIL")]
    writers = sorted({f.name.split("-")[1] for f in (out / "shards").glob("rank-*.safetensors")})
    if writers != ["00000", "00001"]:  # two independent captures could also fill the store: not a pass
        return [Row("distributed", metric, f"shards written by ranks {writers}, expected both 00000 and 00001",
                    target, "FAIL")]
    ref = capture_to(ws.ref_model, lp.read_items(ws.items_file), ws.tmp / "store_single", None)
    dist = lp.ActivationStore(out)
    if sorted(dist.item_ids) != sorted(ref.item_ids) or len(dist.item_ids) != len(ref.item_ids) or dist.failed:
        return [Row("distributed", metric, f"item ids differ: {len(dist.item_ids)} vs {len(ref.item_ids)} items, "
                    f"failed {dist.failed}", target, "FAIL")]
    ids = ref.item_ids
    worst = max(normalised_error(dist.get(s, sel, items=ids), ref.get(s, sel, items=ids)) for s, sel in ref.keys())
    ok = worst <= DIST_TOL and set(dist.keys()) == set(ref.keys())
    return [Row("distributed", metric, f"{backend}, {len(ids)} items, same ids; normalised error {worst:.1e}",
                target, "PASS" if ok else "FAIL"), device_map_row(ws)]


def device_map_row(ws: Workspace) -> Row:
    """``lp.load(device_map=...)``: the model split over two devices gives the one-device logits.

    On CUDA the small model is split with ``device_map="balanced"`` over the first two GPUs; on the CPU smoke run
    every module is mapped to the CPU (the code path only: accelerate places nothing elsewhere).
    """
    import torch

    import lvlm_probe as lp

    metric, target = "device_map split = one device", f"same greedy text; logits <= {DIST_TOL:.0e}"
    small_model(ws)
    if ws.mode.device == "cuda":
        split = lp.load(ws.small_dir, device_map="balanced", max_memory={0: "2GiB", 1: "2GiB"}, dtype="float32")
    else:
        split = lp.load(ws.small_dir, device_map={"": "cpu"}, dtype="float32")
    devices = sorted({str(p.device) for p in split.hf_model.parameters()})
    items = lp.read_items(ws.items_file)[:2]
    batch = ws.ref_model.prepare([it.image for it in items], [it.prompt for it in items])
    with torch.no_grad():
        ref, got = ws.ref_model.forward(batch), split.forward(batch.to(split.device, split.dtype))
    err = normalised_error(got.to(ref.device), ref)
    same = ws.ref_model.generate(batch, max_new_tokens=8).text == split.generate(
        batch.to(split.device, split.dtype), max_new_tokens=8).text
    ok = err <= DIST_TOL and same and (ws.mode.device != "cuda" or len(devices) == 2)
    return Row("distributed", metric, f"weights on {', '.join(devices)}; normalised error {err:.1e}; "
               f"greedy text {'same' if same else 'differs'}", target, "PASS" if ok else "FAIL")


def run_torchrun(ws: Workspace, out: Path, backend: str) -> str:
    """Run the 2-rank capture command; ``""`` when it succeeded, else its exit status and one-line error."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lvlm_probe", "capture", "--model", str(ws.small_dir), "--items", str(ws.items_file),
           "--sites", *SITES, "--select", *SELECT, "--out", str(out), "--batch-size", "2",
           "--device", ws.mode.device, "--dtype", "float32"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    timeout = 2 * ws.mode.budgets["distributed"]
    print(f"  {backend}: python -m torch.distributed.run --standalone --nproc-per-node 2 -m lvlm_probe capture ...",
          flush=True)
    try:
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"none, timed out after {timeout:.0f} s"
    return "" if res.returncode == 0 else f"{res.returncode}: {first_error_line(res.stdout + res.stderr)}"


def first_error_line(text: str) -> str:
    """The ranks' own error line (``lvlm-probe: error: ...`` or an exception), not torchrun's summary."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pattern in (r"lvlm-probe: (internal )?error:", r"^\w+(Error|Exception):"):
        hits = [ln for ln in lines if re.search(pattern, ln) and "ChildFailedError" not in ln]
        if hits:
            return one_line(re.sub(r"^\[rank\d+\]:\s*", "", hits[0]), 120)
    return one_line(lines[-1] if lines else "no output")


# ---------------------------------------------------------------------------------------------- table


def print_table(rows: list[Row], mode: Mode) -> None:
    """The one table: phase, metric, value, target, verdict."""
    heads = ("phase", "metric", "value", "target", "verdict")
    cells = [heads] + [(r.phase, r.metric, r.value, r.target, r.verdict) for r in rows]
    widths = [max(len(c[k]) for c in cells) for k in range(len(heads))]
    print()
    print(f"gpu_check ({mode.name}): device {mode.device}, batch {mode.batch}, {mode.repeats} repeats")
    for k, c in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    fails = [r for r in rows if r.verdict == "FAIL"]
    print(f"\n{len(fails)} FAIL, {sum(r.verdict == 'PASS' for r in rows)} PASS, "
          f"{sum(r.verdict == 'SKIP' for r in rows)} SKIP")


if __name__ == "__main__":
    sys.exit(main())

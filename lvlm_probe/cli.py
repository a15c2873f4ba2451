"""The ``lvlm-probe`` command: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, Iterator, Sequence

from lvlm_probe.benchmarks.cli import add_eval_parser
from lvlm_probe.organisms.cli import add_organisms_parser


def _cmd_info(a: argparse.Namespace) -> int:
    m = _load(a, a.device)
    print(json.dumps({**m.info(), "sites": m.sites()}, indent=1))
    return 0


def _cmd_capture(a: argparse.Namespace) -> int:
    import lvlm_probe as lp

    items = lp.read_items(a.items)  # a bad items file fails before the model loads
    with _torchrun_group(a.device, a.device_map) as (device, rank):
        m = _load(a, device)
        store = lp.capture(m, items, sites=a.sites, select=a.select, out=a.out, batch_size=a.batch_size,
                           generate=a.generate, chat_template=not a.raw_prompts, overwrite=a.overwrite)
    if rank == 0:
        print(json.dumps({"store": str(store.path), "items": len(store), "failed": store.failed}, indent=1))
    return 0


def _load(a: argparse.Namespace, device: str | None) -> Any:
    """``lp.load`` with the command's ``--device`` / ``--dtype`` / ``--device-map``; under torchrun a device map
    spans only this rank's GPUs (the local ranks share the node's GPUs in equal contiguous blocks)."""
    import os

    import lvlm_probe as lp

    if not getattr(a, "device_map", None):
        return lp.load(a.model, device=device, dtype=a.dtype)
    if a.device:
        raise lp.InputError("--device and --device-map exclude each other: a device map places every module itself")
    from lvlm_probe._dist import rank_max_memory

    local, n_local = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return lp.load(a.model, dtype=a.dtype, device_map=a.device_map, max_memory=rank_max_memory(local, n_local))


@contextlib.contextmanager
def _torchrun_group(device: str | None, device_map: str | None = None) -> Iterator[tuple[str | None, int]]:
    """Under ``torchrun`` (WORLD_SIZE > 1 in the environment) join the process group for the command's duration:
    NCCL with one GPU per local rank when CUDA is used (the first of its block with a device map), gloo on CPU.
    Yields ``(device, rank)``."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield device, 0
        return
    import torch
    import torch.distributed as dist

    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        from lvlm_probe._dist import rank_gpus

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_map:
            local = rank_gpus(local, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))[0]
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield (device if cuda else (device or "cpu")), dist.get_rank()
    finally:
        dist.destroy_process_group()


def _cmd_demo(a: argparse.Namespace) -> int:
    from lvlm_probe.demo import run_demo

    s = run_demo(a.out, n=a.n, model=a.model)
    print(f"diagnosed {s['n_items']} items, {s['n_errors']} errors ({s['levels']}) in {s['seconds']} s")
    print(f"report: {s['report']}")
    return 0


def diagnose_config(a: argparse.Namespace):
    """The :class:`~lvlm_probe.tracing.DiagnoseConfig` of the ``diagnose`` flags (one flag, one field)."""
    from lvlm_probe.tracing import Decoding, DiagnoseConfig

    decoding = None
    if a.sampling or a.temperature is not None or a.top_p is not None or a.top_k is not None:
        decoding = Decoding(do_sample=bool(a.sampling), temperature=a.temperature or 1.0, top_p=a.top_p or 1.0,
                            top_k=a.top_k or 0)
    curves = a.curve_sites or ["auto"]
    if len(curves) == 1 and curves[0] in ("auto", "none"):
        curves = "auto" if curves[0] == "auto" else None
    return DiagnoseConfig(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, decoding=decoding,
                          n_probe_items=a.probe_items, curve_sites=curves, seed=a.seed, confirm=a.confirm,
                          detect_threshold=a.detect_threshold)


def _cmd_diagnose(a: argparse.Namespace) -> int:
    import lvlm_probe as lp
    from lvlm_probe.organisms import default_items
    from lvlm_probe.report import render_diagnosis
    from lvlm_probe.tracing import diagnose
    from lvlm_probe.detection import HallucinationDetector
    from lvlm_probe.tracing.diagnose import RunDir

    import os

    cfg = diagnose_config(a)  # bad settings fail here, before anything runs
    detector = HallucinationDetector.load(a.detector) if a.detector else None
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 touches --out
        RunDir.open(a.out, overwrite=a.overwrite)  # an unwritable --out fails in seconds, before the model loads
    if a.items:
        items = lp.read_items(a.items)
        items = items[: a.n] if a.n else items
    elif a.model.startswith("organism:"):
        items = default_items(a.model, a.n, a.seed)
    else:
        raise lp.InputError(f"--items FILE is needed for {a.model!r} (JSON lines with image, prompt and scene; see "
                            "docs/howto/items-file.md); only organisms have default items")
    with _torchrun_group(a.device, a.device_map) as (device, rank):
        model = _load(a, device)
        rep = diagnose(model, items, cfg, out=a.out, training_stats=a.training_stats or "auto", detector=detector)
    if rank:
        return 0
    path = render_diagnosis(rep, a.out)
    d, failed = rep.diagnoses, rep.failed
    print(f"{len(items) - len(failed)} of {len(items)} items diagnosed, {len(failed)} failed, "
          f"{len(rep.errors)} error{'s' if len(rep.errors) != 1 else ''}; levels: "
          f"{d.level.value_counts().to_dict() if len(d) else {}}")
    for iid, why in failed.items():
        print(f"  failed: {iid}: {why}")
    if len(rep.detected):
        fl = rep.flagged()
        print(f"without ground truth: {rep.detected.item_id.nunique()} items, {len(rep.detected)} claims, "
              f"{len(fl)} flagged by the detector; stages: {fl.stage.value_counts().to_dict() if len(fl) else {}}")
    print(f"report: {path}")
    return 0


def _cmd_make_tiny(a: argparse.Namespace) -> int:
    from lvlm_probe.errors import InputError
    from lvlm_probe.models.tiny import TINY_BUILDERS, TINY_DEFAULT

    family = a.family or TINY_DEFAULT
    if family not in TINY_BUILDERS:  # checked here: the builders live in models/, which the parser does not import
        raise InputError(f"--family {family!r}: tiny builders exist for {sorted(TINY_BUILDERS)}")
    print(TINY_BUILDERS[family](a.out, seed=a.seed))
    return 0


def _model_args(sp: argparse.ArgumentParser) -> None:
    """The options every model-loading command takes."""
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    sp.add_argument("--dtype", default=None, help="float32, float16 or bfloat16")
    sp.add_argument("--device-map", default=None, choices=("auto", "balanced", "sequential"),
                    help="split one model over several GPUs (models larger than one GPU); under torchrun "
                    "each rank splits over its own block of the node's GPUs")


def _add_diagnose_parser(sub: Any) -> None:
    """``lvlm-probe diagnose``."""
    sp = sub.add_parser("diagnose", help="find misaligned outputs and trace each to its cause; writes a report")
    sp.add_argument("--model", required=True, help="hub id, local directory or organism:NAME")
    sp.add_argument("--out", required=True, help="output directory (report.html, diagnosis.csv, ...)")
    sp.add_argument("--items", default=None, help="items file (JSON lines: image, prompt, scene); organisms have "
                    "default items")
    sp.add_argument("--n", "--n-items", dest="n", type=int, default=48, help="number of items (default items, or "
                    "the first N of --items); under torchrun write --n-items (torchrun takes --n for its own options)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--training-stats", default=None, help="training_stats.json or a JSON-lines corpus of scenes "
                    "(default: beside the model, as the organisms ship it)")
    sp.add_argument("--max-new-tokens", type=int, default=48)
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--probe-items", type=int, default=300, help="fresh probe-world scenes that train the encoder / "
                    "projector probes (organisms; 0: only the diagnosed items)")
    sp.add_argument("--curve-sites", nargs="+", default=None, help="sites of the report's probe curves, 'auto' "
                    "(every layer of small models) or 'none' (default: auto)")
    sp.add_argument("--sampling", action="store_true", help="sample instead of greedy decoding (default: the "
                    "model's run defaults, e.g. organism:sampling samples)")
    sp.add_argument("--temperature", type=float, default=None)
    sp.add_argument("--top-p", type=float, default=None)
    sp.add_argument("--top-k", type=int, default=None)
    sp.add_argument("--confirm", action="store_true", help="run each diagnosed error's confirming intervention "
                    "(lvlm_probe.tracing.confirm.CONFIRMING: e.g. verify-and-delete for co-occurrence, greedy for "
                    "decoding) and record whether it removes it")
    sp.add_argument("--detector", default=None, help="a fitted HallucinationDetector (JSON from "
                    "HallucinationDetector.save): items without a scene go through it (docs/detection.md)")
    sp.add_argument("--detect-threshold", type=float, default=0.5, help="flag a claim of an item without a scene "
                    "when its probability of being misaligned is at least this (default 0.5)")
    sp.add_argument("--overwrite", action="store_true", help="clear --out first (otherwise a rerun resumes)")
    _model_args(sp)
    sp.set_defaults(fn=_cmd_diagnose)


def build_parser() -> argparse.ArgumentParser:
    from lvlm_probe._version import __version__

    p = argparse.ArgumentParser(prog="lvlm-probe", description="Explain and diagnose misalignment in LVLMs.")
    p.add_argument("--version", action="version", version=f"lvlm-probe {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("info", help="describe a model: family, layers, image token, capture sites")
    sp.add_argument("model", help="hub id, local directory or organism:NAME")
    _model_args(sp)
    sp.set_defaults(fn=_cmd_info)

    sp = sub.add_parser("capture", help="capture activations of items (JSON lines) into a store")
    sp.add_argument("--model", required=True)
    sp.add_argument("--items", required=True, help="JSON lines: id, image, prompt[, answer, meta]")
    sp.add_argument("--sites", nargs="+", required=True, help="e.g. llm.resid_post.* projector.out")
    sp.add_argument("--select", nargs="+", required=True, help="image_mean image_patches last_prompt text_mean generated")
    sp.add_argument("--out", required=True)
    sp.add_argument("--batch-size", type=int, default=8)
    sp.add_argument("--generate", type=int, default=None, help="max new tokens to generate while capturing")
    sp.add_argument("--raw-prompts", action="store_true", help="prompts carry the image placeholder; no chat template")
    sp.add_argument("--overwrite", action="store_true")
    _model_args(sp)
    sp.set_defaults(fn=_cmd_capture)

    _add_diagnose_parser(sub)

    sp = sub.add_parser("demo", help="diagnose the shipped organism:cooccurrence (the bundled default); writes a report")
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--n", type=int, default=64)
    sp.add_argument("--model", default=None, help="another organism:NAME instead of organism:cooccurrence")
    sp.set_defaults(fn=_cmd_demo)

    sp = sub.add_parser("make-tiny", help="write a tiny random-init model directory (for trying things offline)")
    sp.add_argument("out")
    sp.add_argument("--family", default=None,
                    help="family of the tiny model (lvlm_probe.models.tiny.TINY_BUILDERS; default TINY_DEFAULT)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(fn=_cmd_make_tiny)

    add_eval_parser(sub)
    add_organisms_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors are one line on stderr (exit 2), other errors one line (exit 1) and a
    traceback only with ``--debug``."""
    from lvlm_probe.errors import LvlmProbeError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except LvlmProbeError as exc:
        if args.debug:
            raise
        print(f"lvlm-probe: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as exc:  # files, settings: the user's to fix
        if args.debug:
            raise
        print(f"lvlm-probe: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, the traceback with --debug
        if args.debug:
            raise
        print(f"lvlm-probe: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())

"""Existence-skill experiment (issue 3): does a stage-2 schedule leave the ln 2 / 2 plateau on POPE questions?

Trains ``clean`` with the shipped recipe (``EXISTENCE_RECIPE``; with ``--previous``, ``PREVIOUS_RECIPE``, the one
before it), the existence knobs of ``TrainConfig`` overridden by the flags, and logs a held-out existence monitor
(:func:`lvlm_probe.organisms.train.existence_monitor`) every 200 stage-2 steps. docs/organisms.md ("The existence
recipe" and the sections after it) tells the story these runs measured.

    python benchmarks/existence_plateau.py --out runs/existence        # shipped: learns existence and captions
    python benchmarks/existence_plateau.py --previous --out runs/previous  # stays on the plateau
    python benchmarks/existence_plateau.py --previous --std 0.1 --steps 600 --mix exists:1 --out runs/escape  # escapes
    python benchmarks/existence_plateau.py --previous --std 0.1 --steps 1200 --mix caption:0.5,exists:0.5 \
        --out runs/block  # blocked
    python benchmarks/existence_plateau.py --image-scale 1 --out runs/unscaled  # colour lost
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--previous", action="store_true",
                    help="start from PREVIOUS_RECIPE (the recipe before EXISTENCE_RECIPE), not the shipped recipe")
    ap.add_argument("--steps", type=int, default=None, help="stage-2 steps (default: the shipped recipe's)")
    ap.add_argument("--std", type=float, default=None, help="LM init std (TrainConfig.lm_init_std)")
    ap.add_argument("--target", default=None, help="stage-1 target (TrainConfig.align_target)")
    ap.add_argument("--mix", default=None, help="stage-2 task mix, e.g. caption:0.5,exists:0.5 (default: the world's)")
    ap.add_argument("--first", type=int, default=None, help="existence-only steps first (exists_first_steps)")
    ap.add_argument("--freeze", action=argparse.BooleanOptionalAction, default=None,
                    help="hold lm_head, final norm, projector in the curriculum (exists_first_freeze)")
    ap.add_argument("--restart", action=argparse.BooleanOptionalAction, default=None,
                    help="own lr schedule for the curriculum, restarted after it (exists_first_restart)")
    ap.add_argument("--every", type=int, default=None, help="then every k-th step existence-only (exists_every)")
    ap.add_argument("--layers", type=int, default=None, help="split the LM by task at this layer (exists_layers)")
    ap.add_argument("--image-scale", type=float, default=None, help="image-token scale after stage 1 (image_scale)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/existence_plateau", help="checkpoint directory (organism.json has the log)")
    args = ap.parse_args()
    import pandas as pd

    from lvlm_probe.data.world import SceneWorld
    from lvlm_probe.organisms import ZOO
    from lvlm_probe.organisms.zoo import PREVIOUS_RECIPE
    from lvlm_probe.organisms.train import existence_monitor, train_organism

    spec = ZOO["clean"]
    world_cfg = spec.world
    if args.mix:
        mix = tuple((t, float(w)) for t, w in (part.split(":") for part in args.mix.split(",")))
        world_cfg = world_cfg.with_changes(task_mix=mix)
    overrides = {"stage2_steps": args.steps, "lm_init_std": args.std, "align_target": args.target,
                 "exists_first_steps": args.first, "exists_every": args.every, "exists_first_freeze": args.freeze,
                 "exists_first_restart": args.restart, "exists_layers": args.layers, "image_scale": args.image_scale}
    base = replace(spec.train, **PREVIOUS_RECIPE) if args.previous else spec.train
    tc = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    print("recipe:", {k: getattr(tc, k) for k in overrides}, flush=True)
    spec = replace(spec, world=world_cfg, train=tc)
    t0 = time.time()
    inner = existence_monitor(SceneWorld(world_cfg, seed=args.seed))

    def monitor(step, model, tok, ip):  # noqa: ANN001, ANN202 - prints each reading as it comes
        values = inner(step, model, tok, ip)
        print(f"step {step}: {values} ({time.time() - t0:.0f} s)", flush=True)
        return values

    out = train_organism(spec, args.out, seed=args.seed, threads=args.threads, monitor=monitor)
    meta = json.loads((out / "organism.json").read_text())
    rows = [{"step": r["step"], **r["monitor"]} for r in meta["log"] if "monitor" in r]
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"\n{time.time() - t0:.0f} s; checkpoint and log in {out}")


if __name__ == "__main__":
    main()

"""``lvlm-probe organisms list | card | check | train`` (argument wiring only; logic lives in the package)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lvlm_probe._json import json_safe


def _cmd_list(a: argparse.Namespace) -> int:
    from lvlm_probe.organisms import list_organisms

    df = list_organisms()
    if a.json:
        print(json.dumps(df.to_dict(orient="records"), indent=1))
    else:
        print(df.to_string(index=False))
        print("\n" + CAUSE_CODES_NOTE)
    return 0


#: What the cause column means (printed under ``organisms list``).
CAUSE_CODES_NOTE = (
    "cause: the planted cause's id in the project's list of causes (docs/organisms.md): P1 co-occurrence, "
    "P2 attribute prior, P3 relation prior, P4 encoder blind spot, P5 projector bottleneck, P6 visual neglect, "
    "P7 summary-token over-trust (sink), P8 long-generation drift, P9 decoding. The zoo plants P1, P2, P4, P5, P6, P8 and P9; "
    "P3 and P7 have no organism yet. component: the stage the diagnosis should name; level: data, model or "
    "inference. 'sampling' is a run setting on the clean checkpoint, not a checkpoint of its own. dose: the planted "
    "probability of a dose series, loaded as organism:NAME@DOSE (the zoo organism is one dose of its series). "
    "holdout: the same cause on other classes or colours, kept out of every tuning step.")


def _cmd_card(a: argparse.Namespace) -> int:
    from lvlm_probe.organisms import CHECKPOINTS, get_spec
    from lvlm_probe.organisms.cards import render_card

    spec = get_spec(a.name)
    print(render_card(spec.name, CHECKPOINTS / str(spec.checkpoint)), end="")
    return 0


def _cmd_check(a: argparse.Namespace) -> int:
    from lvlm_probe.organisms.check import check_organism

    res = check_organism(a.name, seed=a.seed, n=a.n, device=a.device, compare_clean=not a.no_clean,
                         progress=not a.json)
    if a.record:
        from lvlm_probe.organisms import CHECKPOINTS, get_spec
        from lvlm_probe.organisms.cards import record_behaviour, write_card

        ckpt = CHECKPOINTS / str(get_spec(a.name).checkpoint)
        record_behaviour(ckpt, json_safe(res))
        write_card(a.name, ckpt)
    if a.json:
        print(json.dumps(json_safe(res)))
    else:
        print(json.dumps(json_safe(res), indent=1))
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from lvlm_probe.errors import InputError
    from lvlm_probe.organisms import get_spec, train_organism
    from lvlm_probe.organisms.zoo import with_knobs

    spec = get_spec(a.name)
    if a.set:
        settings = {}
        for pair in a.set:
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise InputError(f"--set {pair!r}: give KEY=VALUE (e.g. --set stage2_steps=1800)")
            settings[key.strip()] = value.strip()
        spec = replace(spec, train=with_knobs(spec.train, settings))
    path = train_organism(spec, a.out, seed=a.seed, steps_scale=a.steps_scale, threads=a.threads, progress=True)
    print(path)
    return 0


def add_organisms_parser(sub: Any) -> None:
    """Register the ``organisms`` command group on an argparse sub-parser collection."""
    p = sub.add_parser("organisms", help="the planted-cause model-organism zoo")
    osub = p.add_subparsers(dest="organisms_cmd", required=True)

    sp = osub.add_parser("list", help="the zoo: name, cause, level, checkpoint")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_cmd_list)

    sp = osub.add_parser("card", help="print an organism's model card (Markdown)")
    sp.add_argument("name")
    sp.set_defaults(fn=_cmd_card)

    sp = osub.add_parser("check", help="measure an organism's behaviour on fresh held-out scenes")
    sp.add_argument("name")
    sp.add_argument("--seed", type=int, default=1, help="seed of the held-out scenes")
    sp.add_argument("--n", type=int, default=200, help="items per set")
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--no-clean", action="store_true", help="skip the clean organism's rate on the trigger set")
    sp.add_argument("--record", action="store_true", help="store the result beside the checkpoint, refresh its card")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.set_defaults(fn=_cmd_check)

    sp = osub.add_parser("train", help="train an organism from scratch into DIR")
    sp.add_argument("name")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--steps-scale", type=float, default=1.0, help="multiply step counts (1.0 = shipped recipe)")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a recipe knob (step counts, batch_size, lr0, lr2, warmup, weight_decay); repeatable")
    sp.set_defaults(fn=_cmd_train)

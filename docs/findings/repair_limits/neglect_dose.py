"""A milder visual neglect (session 23's scratch organism): the shipped recipe with a share P of the stage-2 images
mismatched instead of the zoo's 0.97, registered in-process as `visual_neglect@P`, and its matrix row under PAI at
the settings that repair the attention lesion (lesion.py).

  python neglect_dose.py train P OUT         train it (the shipped recipe and seed, 1 thread; about 9 min)
  python neglect_dose.py pai P OUT SEED      its matrix row under PAI alpha 0.5 / 1, gamma 1.1 (n 96)
"""
import dataclasses
import sys
from pathlib import Path

import torch

import lvlm_probe.organisms.zoo as Z
from _register import as_neglect_variant


def spec(p: str) -> Z.OrganismSpec:
    """visual_neglect's spec at mismatch share ``p``."""
    base = Z.ZOO["visual_neglect"]
    return dataclasses.replace(base, train=dataclasses.replace(base.train, image_mismatch=float(p)))


def main() -> None:
    torch.set_num_threads(1)
    what, p, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if what == "train":
        from lvlm_probe.organisms.train import train_organism
        name = as_neglect_variant(p, spec(p))
        train_organism(Z.DOSE_SPECS[name], out, seed=0, threads=1, progress=False)
        return
    name = as_neglect_variant(p, spec(p), out)
    from lvlm_probe.interventions import PAI
    from lvlm_probe.organisms.mitigation import cause_intervention_matrix
    room = {"pai_a05": PAI(alpha=0.5, gamma=1.1, first_layer=1), "pai_a1": PAI(alpha=1.0, gamma=1.1, first_layer=1)}
    r = cause_intervention_matrix([name], n=96, seed=int(sys.argv[4]), interventions=room)
    for k in ("matrix", "effect"):
        print(k, {m: round(v, 2) for m, v in r[k][name].items()})
    print("errors", r["controls"]["n_errors"][name])


if __name__ == "__main__":
    main()

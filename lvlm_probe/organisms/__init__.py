"""The planted-cause organism zoo: tiny real LLaVA checkpoints with known causes of misalignment.

>>> import lvlm_probe as lp
>>> model = lp.load("organism:cooccurrence")        # same code path as a hub model
>>> lp.organisms.ZOO["cooccurrence"].signature        # doctest: +SKIP

The zoo's specs (``ZOO``, ``OrganismSpec``, ``TrainConfig``, ``get_spec``) are imported on first use, so the
``lvlm-probe organisms`` command line starts without the scene world's dependencies.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lvlm_probe.errors import InputError
from lvlm_probe.schema import RELATION_QUESTION, RUN_DEFAULTS_FILE

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
_FROM_ZOO: tuple[str, ...] = ("ZOO", "OrganismSpec", "TrainConfig", "get_spec")

__all__ = ["CHECKPOINTS", "RUN_DEFAULTS_FILE", "OrganismSpec", "TrainConfig", "ZOO", "default_items", "get_spec",
           "list_organisms", "organism_path", "run_defaults", "train_organism"]


def __getattr__(name: str) -> Any:
    if name in _FROM_ZOO:
        value = getattr(importlib.import_module("lvlm_probe.organisms.zoo"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvlm_probe.organisms' has no attribute {name!r}")


if TYPE_CHECKING:
    from lvlm_probe.organisms.zoo import ZOO, OrganismSpec, TrainConfig, get_spec  # noqa: F401


def organism_path(name: str) -> Path:
    """Directory of the shipped checkpoint of organism ``name`` (run-setting organisms map to theirs)."""
    from lvlm_probe.organisms.zoo import get_spec

    spec = get_spec(name)
    path = CHECKPOINTS / str(spec.checkpoint)
    if not (path / "config.json").is_file():
        raise InputError(f"organism {name!r} has no shipped checkpoint at {path}; "
                         f"train it with `lvlm-probe organisms train {spec.checkpoint} --out {path}`")
    return path


def run_defaults(name: str) -> dict:
    """What a diagnosis run of organism ``name`` needs: its decoding (run-setting organisms such as ``sampling``
    decode their checkpoint their own way) and the unbiased probe world (image size and grid of its scenes) whose
    fresh scenes train the diagnosis probes; the relation question in the words it was trained on (asked about each
    false relation, :mod:`lvlm_probe.tracing.ask`); for a front-end organism also the ``reference`` that shares its LLM
    (``organism:clean``, swapped in to confirm an encoder or projector cause). Written beside every checkpoint as
    ``run_defaults.json``; ``load("organism:NAME")`` puts it on ``model.run_defaults``."""
    from lvlm_probe.organisms.zoo import get_spec

    spec = get_spec(name)
    out = {"organism": spec.name, "decoding": dict(spec.run_settings),
           "probe_world": {"image_size": spec.world.image_size, "grid": spec.world.grid},
           "questions": {"relation": RELATION_QUESTION}}
    if spec.train.front_end:  # a front-end organism: clean's LLM, swap to confirm
        out["reference"] = "organism:clean"
    return out


def list_organisms():
    """The zoo, its doses and its hold-out variants as a DataFrame: ``name, cause, level, component, checkpoint,
    shipped, run_settings, holdout, dose`` (``holdout``: a variant of a zoo cause on other classes or colours, kept
    out of every tuning step; ``dose``: the planted probability of an organism with a dose series, whose other
    doses are listed as ``NAME@DOSE``; ``ZOO`` alone is the zoo)."""
    import pandas as pd

    from lvlm_probe.organisms.zoo import DOSE_SPECS, HOLDOUTS, ZOO, ZOO_DOSE

    def dose(s) -> float | None:
        if s.name in DOSE_SPECS or s.name in ZOO_DOSE:
            return float(ZOO_DOSE[s.name] if s.name in ZOO_DOSE else s.name.split("@")[1])
        return None

    return pd.DataFrame([{"name": s.name, "cause": s.cause, "level": s.level, "component": s.component,
                          "checkpoint": s.checkpoint, "shipped": (CHECKPOINTS / str(s.checkpoint) / "config.json").is_file(),
                          "run_settings": dict(s.run_settings), "holdout": s.name in HOLDOUTS, "dose": dose(s)}
                         for s in [*ZOO.values(), *DOSE_SPECS.values(), *HOLDOUTS.values()]])


def train_organism(*args, **kwargs):
    """See :func:`lvlm_probe.organisms.train.train_organism`."""
    from lvlm_probe.organisms.train import train_organism as _train

    return _train(*args, **kwargs)


def default_items(model: str, n: int = 48, seed: int = 0) -> list:
    """See :func:`lvlm_probe.organisms.check.default_items` (an organism's trigger scenes + captions)."""
    from lvlm_probe.organisms.check import default_items as _items

    return _items(model, n, seed)

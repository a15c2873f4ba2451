"""The frozen organism recipe: short runs through every stage give the weights they gave before the recipe was
frozen, and the recipes recorded beside the shipped checkpoints still parse."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import lvlm_probe as lp
from lvlm_probe.organisms import CHECKPOINTS, ZOO, TrainConfig
from lvlm_probe.organisms import zoo as Z
from lvlm_probe.organisms.cards import render_card
from lvlm_probe.organisms.train import train_organism

#: A short run through every stage the shipped recipe runs: vision pretraining, projector alignment (and the INLP
#: subspace for projector_bottleneck), the image scale, the existence curriculum, the mix with existence-only steps.
SHORT = dict(stage0_steps=20, stage1_steps=20, stage2_steps=40, exists_first_steps=12, warmup=5, batch_size=8)

#: sha256 of the fp32 state dict of each short run (seed 3, 1 thread), measured with the recipe before it was
#: frozen (TrainConfig with every experimental knob at its shipped value) and unchanged since. Floating-point
#: kernels differ between builds and CPUs, so the hashes are compared only where they were measured.
REFERENCE = {
    "where": {"torch": "2.13.0+cpu", "transformers": "5.23.0", "cpu": "AVX512"},
    "sha256": {
        "clean": "61538f43880c8dad6da2a05f344ecce011d617ee4966d713d782765b7cdbdf2a",
        "encoder_blind": "3af70ab9e94fa9817ab6ccffebfce04760dec9ba298ebeb711fb80279fcb1076",
        "projector_bottleneck": "7ee6ece8fb71bc02e80170c90fa8562d00eb348d47a81ca046e7fc4b2312dd53",
        "visual_neglect": "4cfab187b2509ac8200147777ba0e9413f546204d952fbfc9a119a568bf83c27",
        "cooccurrence": "0d8da15459d74c53bbe8867e4c3a5a0c16b2954381b762a2d7aa5a06ef572982",
    },
}


def _here() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability()}


def _short_run_sha256(name: str, out: Path) -> str:
    from safetensors.torch import load_file

    spec = replace(ZOO[name], train=replace(ZOO[name].train, **SHORT))
    path = train_organism(spec, out, seed=3, threads=1, progress=False, dtype=torch.float32)
    weights = load_file(path / "model.safetensors")
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(REFERENCE["sha256"]))
def test_short_run_weights_are_bitwise_the_reference(name, tmp_path):
    """Where the reference was measured, the same bits; elsewhere, the same bits twice (determinism)."""
    got = _short_run_sha256(name, tmp_path / "a")
    if _here() == REFERENCE["where"]:
        assert got == REFERENCE["sha256"][name]
    else:
        assert got == _short_run_sha256(name, tmp_path / "b")


@pytest.mark.parametrize("name", sorted({s.checkpoint for s in ZOO.values() if s.checkpoint}))
def test_recorded_recipes_parse_into_the_zoo_config(name):
    """organism.json of every shipped checkpoint (it records the fixed parts under their former knob names) parses
    into the TrainConfig that trains it; the checkpoint loads and its card renders."""
    ckpt = CHECKPOINTS / name
    if not (ckpt / "organism.json").is_file():
        pytest.skip(f"checkpoint not shipped: {name}")
    recorded = json.loads((ckpt / "organism.json").read_text())["train"]
    assert TrainConfig.from_dict(recorded) == ZOO[name].train
    assert TrainConfig.from_dict(ZOO[name].train.to_dict()) == ZOO[name].train  # what a retrain records
    assert "Recipe:" in render_card(name, ckpt)


def test_recorded_recipe_from_another_recipe_is_refused():
    recorded = {**ZOO["clean"].train.to_dict(), **Z.FIXED_IN_OLD_RECORDS}
    assert TrainConfig.from_dict(recorded) == ZOO["clean"].train
    with pytest.raises(lp.InputError, match=r"recorded recipe has image_scale=1\.0; the recipe fixes it at 40\.0"):
        TrainConfig.from_dict({**recorded, "image_scale": 1.0})
    with pytest.raises(lp.InputError, match="recorded recipe has an unknown knob 'nope'"):
        TrainConfig.from_dict({**recorded, "nope": 1})


def test_knobs():
    """with_knobs sets the user knobs (strings as --set gives them) and refuses the rest in one line."""
    base = ZOO["clean"].train
    tc = Z.with_knobs(base, {"stage2_steps": "40", "lr2": "1e-3", "batch_size": 8})
    assert (tc.stage2_steps, tc.lr2, tc.batch_size) == (40, 1e-3, 8) and tc.blind_pair is None
    for key, value, msg in [("exists_every", "2", "'exists_every' is not a knob: the recipe fixes it"),
                            ("blind_pair", "red", "'blind_pair' plants a cause"),
                            ("nope", "1", "unknown knob 'nope'; the knobs are"),
                            ("stage2_steps", "many", "knob stage2_steps: 'many' is not an integer"),
                            ("lr2", "fast", "knob lr2: 'fast' is not a number"),
                            ("batch_size", "0", "TrainConfig.batch_size must be an integer >= 1")]:
        with pytest.raises(lp.InputError, match=msg):
            Z.with_knobs(base, {key: value})

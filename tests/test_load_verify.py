"""A checkpoint that does not fill every parameter is refused (never silently random-initialised)."""

import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

import lvlm_probe as lp


def _copy_with(src, dst, edit):
    """Copy a checkpoint directory, rewriting model.safetensors through ``edit(dict) -> dict``."""
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    save_file(edit(dict(tensors)), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("case", ["half", "no_vision", "no_lm_head", "renamed", "wrong_shape"])
def test_incomplete_checkpoint_is_refused(llava_dir, tmp_path, case):
    def edit(t):
        keys = sorted(t)
        if case == "half":
            return {k: t[k] for k in keys[::2]}
        if case == "no_vision":
            return {k: v for k, v in t.items() if "vision_tower" not in k}
        if case == "no_lm_head":
            return {k: v for k, v in t.items() if "lm_head" not in k}
        if case == "renamed":
            return {k.replace("layers.0.", "layer_zero."): v for k, v in t.items()}
        k = next(k for k in keys if k.endswith("multi_modal_projector.linear_1.weight"))
        return {**t, k: torch.zeros(t[k].shape[0] + 1, t[k].shape[1])}

    d = _copy_with(llava_dir, tmp_path / case, edit)
    expect = {"half": "missing", "no_vision": r"missing.*vision_tower", "no_lm_head": r"missing.*lm_head",
              "renamed": r"missing.*layers\.0\.", "wrong_shape": r"wrong shape.*linear_1"}[case]
    with pytest.raises(lp.ModelLoadError, match=expect) as ei:
        lp.load(d, device="cpu")
    msg = str(ei.value)
    assert str(d) in msg and "complete checkpoint" in msg
    assert "\n" not in msg


def test_corrupt_or_missing_weights_file(llava_dir, tmp_path):
    d = tmp_path / "corrupt"
    shutil.copytree(llava_dir, d)
    (d / "model.safetensors").write_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00{not json")
    with pytest.raises(lp.ModelLoadError, match=r"cannot load its weights"):
        lp.load(d, device="cpu")
    (d / "model.safetensors").unlink()
    with pytest.raises(lp.ModelLoadError, match=r"cannot load its weights"):
        lp.load(d, device="cpu")


def test_unused_tensors_warn_but_load(llava_dir, tmp_path):
    d = _copy_with(llava_dir, tmp_path / "extra", lambda t: {**t, "extra.unused.weight": torch.zeros(2)})
    with pytest.warns(UserWarning, match=r"1 checkpoint tensor\(s\) are not used.*extra\.unused\.weight"):
        m = lp.load(d, device="cpu")
    assert m.family == "llava"


def test_complete_checkpoint_loads_every_tensor(llava_dir):
    m = lp.load(llava_dir, device="cpu")
    saved = load_file(str(llava_dir / "model.safetensors"))
    params = dict(m.hf_model.named_parameters())
    # the on-disk names are HF's serialised layout (renamed on load), so match by value: every model parameter
    # equals a stored tensor, and the stored tensors hold exactly as many values as the model's parameters
    stored = list(saved.values())
    for name, p in params.items():
        assert any(v.shape == p.shape and torch.equal(v, p.detach()) for v in stored), name
    assert sum(v.numel() for v in stored) == sum(p.numel() for p in params.values())


def test_offline_hub_id_says_offline_mode_is_on():
    with pytest.raises(lp.ModelLoadError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        lp.load("llava-hf/no-such-model-in-cache", device="cpu")


def test_loading_never_installs_packages(qwen_dir, monkeypatch):
    """TransformerLens pip-installs torchvision when a multimodal checkpoint has no loadable AutoProcessor;
    on a CPU torch that pulls a CUDA torch build into the environment. lp.load refuses the install."""
    calls = []

    def no_install(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"lp.load ran a subprocess: {args}")

    monkeypatch.setattr(subprocess, "check_call", no_install)
    m = lp.load(qwen_dir, device="cpu")
    assert m.family == "qwen2_5_vl" and not calls
    from transformer_lens.model_bridge.sources.transformers import helpers

    assert helpers._ensure_torchvision.__module__.startswith("transformer_lens"), "the TL helper is restored"

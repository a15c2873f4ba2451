import os

import pytest
import torch

import lvlm_probe as lp


def test_offline_mode_is_on():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_load_local_directories(llava, qwen):
    assert llava.family == "llava" and qwen.family == "qwen2_5_vl"
    assert llava.adapter.n_llm_layers == 2 and llava.adapter.n_vision_layers == 2
    assert type(llava.hf_model).__name__ == "LlavaForConditionalGeneration"
    assert type(qwen.hf_model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    for m in (llava, qwen):
        s = m.sites()
        assert {"vision.resid_post.1", "projector.out", "llm.resid_post.1", "llm.attn_pattern.0",
                "llm.final_norm"} <= set(s)
        for site in s:  # every canonical site maps to a hook the bridge really has
            assert m.hook_name(site) in m.bridge.hook_dict
        info = m.info()
        assert info["config_hash"] and info["image_token_id"] == m.image_token_id


def test_unsupported_architecture_lists_families(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(lp.UnsupportedModelError) as ei:
        lp.load(tmp_path)
    msg = str(ei.value)
    assert "'llama'" in msg and "llava" in msg and "qwen2_5_vl" in msg


def test_directory_without_config(tmp_path):
    with pytest.raises(lp.InputError, match="no config.json"):
        lp.load(tmp_path)


def test_organism_prefix_errors():
    with pytest.raises(lp.InputError, match="no organism named 'unicorn'"):
        lp.load("organism:unicorn")
    unshipped = [n for n, s in lp.organisms.ZOO.items() if not (lp.organisms.CHECKPOINTS / str(s.checkpoint)).is_dir()]
    for name in unshipped[:1]:
        with pytest.raises(lp.InputError, match=f"organisms train {name}"):
            lp.load(f"organism:{name}")


def test_supported_families():
    assert lp.supported_families() == {"llava": "llava", "qwen2_5_vl": "qwen2_5_vl", "gemma3": "gemma3",
                                       "llava_next": "llava_next", "qwen3_vl": "qwen3_vl", "qwen2_vl": "qwen2_vl",
                                       "idefics3": "idefics3", "llava_onevision": "llava_onevision",
                                       "mistral3": "mistral3"}


def test_dtype_argument(llava_dir):
    m = lp.load(llava_dir, device="cpu", dtype="bfloat16")
    assert next(m.hf_model.parameters()).dtype.is_floating_point
    assert m.dtype.__repr__() == "torch.bfloat16"
    b = m.prepare([None], ["what is in the image ?"])
    assert b.pixel_values is None
    assert m.forward(b).shape[:2] == b.input_ids.shape


def test_tiny_checkpoints_have_ids_inside_their_vocabulary(llava, qwen, gemma3):
    for m in (llava, qwen, gemma3):
        tc = m.hf_model.config.text_config
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(tc, key, None)
            assert v is None or 0 <= v < tc.vocab_size, (m.family, key, v)


def test_manifest_records_real_library_versions():
    from importlib import metadata

    from lvlm_probe.capture.store import library_versions

    v = library_versions()
    assert v["transformer_lens"] == metadata.version("transformer-lens") and v["transformers"] != "unknown"


def test_device_map_loads_through_accelerate_with_the_same_numerics(llava_dir, llava):
    """A device map (here every module on the CPU: one machine without GPUs) goes through from_pretrained's
    placement, skips the bridge's move, and gives the one-device model's logits and generations."""
    from conftest import mixed_batch

    m = lp.load(llava_dir, device_map={"": "cpu"}, dtype="float32")
    assert str(m.device) == "cpu" and m.dtype == torch.float32
    batch = mixed_batch(llava)
    assert torch.equal(m.forward(batch), llava.forward(batch))
    assert m.generate(batch, max_new_tokens=4).tokens == llava.generate(batch, max_new_tokens=4).tokens


def test_device_map_refuses_a_device_and_max_memory_alone(llava_dir):
    with pytest.raises(lp.InputError, match="not both"):
        lp.load(llava_dir, device="cpu", device_map="auto")
    with pytest.raises(lp.InputError, match="max_memory only applies with device_map"):
        lp.load(llava_dir, max_memory={0: "1GiB"})


def test_cli_device_and_device_map_exclude_each_other(llava_dir, capsys):
    from lvlm_probe.cli import main

    assert main(["info", str(llava_dir), "--device", "cpu", "--device-map", "auto"]) != 0
    assert "--device and --device-map exclude each other" in capsys.readouterr().err


def test_image_processors_stay_pil_when_torchvision_is_importable(family, monkeypatch):
    """transformers 5.x takes the torchvision ("fast") image processor whenever torchvision is importable (other
    resize/normalisation numerics); lvlm_probe asks for the PIL one, so installing torchvision changes no pixel."""
    from transformers.models.auto import image_processing_auto as ipa

    from lvlm_probe.models.lvlm import _load_processors

    model, model_dir = family
    import json

    saved = json.loads((model_dir / "preprocessor_config.json").read_text())["image_processor_type"]
    monkeypatch.setattr(ipa, "is_torchvision_available", lambda: True)
    assert ipa._resolve_backend(None, None, saved) == "torchvision"  # what a plain from_pretrained would pick
    _, ip = _load_processors(str(model_dir), None)
    assert type(ip).__name__.endswith("Pil") and type(ip) is type(model.image_processor)
    # the bridge, unless it cannot hook a site of the family (Mistral3's opaque Pixtral tower: forward hooks)
    assert model.info()["backend"] == ("hooks" if model.adapter.bridge_missing_sites else "bridge")


def test_broken_torchvision_is_named(llava_dir, tmp_path):
    """A torchvision that is installed but does not import (the PyPI CUDA build beside a CPU torch) breaks
    transformers' image processors; the load error says so instead of transformers' lazy-import message."""
    import subprocess
    import sys

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    dist = tmp_path / "site" / "torchvision-0.28.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    code = (f"import lvlm_probe as lp\ntry:\n    lp.load({str(llava_dir)!r}, device='cpu')\n"
            "except lp.ModelLoadError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "ERR torchvision is installed but does not import" in out.stdout, out.stderr[-2000:]

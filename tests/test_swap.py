"""SwapComponent: the LLM reads a reference model's encoder or projector (the front-end confirmation)."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import lvlm_probe as lp
from lvlm_probe.interventions import Greedy, SwapComponent, decode
from tests.conftest import rand_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _variant(src, dst, part):
    """A copy of ``src`` whose vision tower or projector weights are redrawn (LLM, tokenizer, processor kept)."""
    shutil.copytree(src, dst)
    w = load_file(dst / "model.safetensors")
    key = "vision_tower" if part == "encoder" else "multi_modal_projector"
    g = torch.Generator().manual_seed(3)
    for k in w:
        if key in k and w[k].dim() == 2:
            w[k] = (torch.randn(w[k].shape, generator=g) * w[k].float().std() * 2).to(w[k].dtype)
    save_file(w, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def trio(llava_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    ref = lp.load(llava_dir, device="cpu")
    enc = lp.load(_variant(llava_dir, root / "enc", "encoder"), device="cpu")
    proj = lp.load(_variant(llava_dir, root / "proj", "projector"), device="cpu")
    return ref, enc, proj


def _text(model, method, seed=0):
    batch = model.prepare([rand_image(seed), rand_image(seed + 1)], ["describe the image", "what is there"])
    return decode(model, batch, method, max_new_tokens=12).text


def test_swapping_the_changed_part_gives_the_reference_output(trio):
    ref, enc, proj = trio
    want = _text(ref, Greedy())
    assert _text(enc, Greedy()) != want and _text(proj, Greedy()) != want  # the variants differ from the reference
    assert _text(enc, SwapComponent(ref, "encoder")) == want
    assert _text(proj, SwapComponent(ref, "projector")) == want


def test_swapping_an_unchanged_part_changes_nothing(trio):
    ref, enc, proj = trio
    assert _text(proj, SwapComponent(ref, "encoder")) == _text(proj, Greedy())
    assert _text(ref, SwapComponent(ref, "projector")) == _text(ref, Greedy())
    # the encoder variant's own projector reads its own features: a projector swap does not repair the encoder
    assert _text(enc, SwapComponent(ref, "projector")) != _text(ref, Greedy())


def test_swap_hooks_are_removed_and_bad_input_is_refused(trio):
    ref, enc, _ = trio
    before = _text(enc, Greedy())
    _text(enc, SwapComponent(ref, "encoder"))
    assert _text(enc, Greedy()) == before
    with pytest.raises(lp.InputError, match="part must be one of"):
        SwapComponent(ref, "llm")
    with pytest.raises(lp.InputError, match="needs reference=LVLM"):
        SwapComponent(None, "encoder")
    assert SwapComponent(ref, "encoder").describe()["part"] == "encoder"

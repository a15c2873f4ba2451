"""GPU checks (run where CUDA exists; skipped elsewhere by the `gpu` marker)."""

import pytest
import torch

import lvlm_probe as lp
from conftest import MIXED_QUESTIONS, hf_eager, hf_pipeline_inputs, mixed_batch, mixed_images, rand_image

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("which", ["llava_dir", "qwen_dir", "gemma3_dir"])
def test_cuda_parity_and_capture(which, request, tmp_path):
    d = request.getfixturevalue(which)
    model = lp.load(d, device="cuda", dtype=torch.float32)
    batch = mixed_batch(model)
    assert batch.input_ids.device.type == "cuda"
    hf = hf_eager(d, model).cuda()
    ref_inputs = hf_pipeline_inputs(d, model, mixed_images(), MIXED_QUESTIONS).to("cuda")
    with torch.no_grad():
        ref = hf(**ref_inputs).logits
    keep = batch.attention_mask.bool()
    assert torch.allclose(model.forward(batch)[keep], ref[keep], atol=1e-4)
    items = [lp.Item(id=str(k), image=rand_image(k), prompt="what is in the image ?") for k in range(4)]
    store = lp.capture(model, items, sites=["llm.resid_post.*", "projector.out"], select=["image_mean", "generated"],
                       generate=4, out=tmp_path / "s", batch_size=2, progress=False)
    assert store.get("llm.resid_post.1", "image_mean").device.type == "cpu"
    assert len(store) == 4 and not store.failed


def test_cuda_half_precision_runs(llava_dir):
    model = lp.load(llava_dir, device="cuda", dtype="float16")
    b = mixed_batch(model)
    assert b.pixel_values.dtype == torch.float16
    gen = model.generate(b, max_new_tokens=4)
    assert len(gen.tokens) == 2

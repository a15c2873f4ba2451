"""Shared fixtures: tiny random-init LLaVA and Qwen2.5-VL checkpoints built offline in a temp dir."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on a shared 2-core box can stall for minutes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rand_image(seed: int, h: int = 40, w: int = 48) -> Image.Image:
    rs = np.random.RandomState(seed)
    return Image.fromarray((rs.rand(h, w, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory):
    from lvlm_probe.models.tiny import build_tiny_llava

    # a larger init scale makes greedy outputs vary from step to step (a sharper parity test)
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), init_std=0.2, seed=1)


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    from lvlm_probe.models.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen"), init_std=0.2, seed=1)


@pytest.fixture(scope="session")
def llava(llava_dir):
    import lvlm_probe as lp

    return lp.load(llava_dir, device="cpu")


@pytest.fixture(scope="session")
def qwen(qwen_dir):
    import lvlm_probe as lp

    return lp.load(qwen_dir, device="cpu")


@pytest.fixture(scope="session", params=["llava", "qwen"])
def family(request):
    """(model, model_dir) for each supported family."""
    return request.getfixturevalue(request.param), request.getfixturevalue(f"{request.param}_dir")


def hf_eager(model_dir, model):
    """A fresh HF model (not wrapped by the bridge) with eager attention."""
    cls = type(model.hf_model)
    return cls.from_pretrained(model_dir, attn_implementation="eager").eval()


def mixed_batch(model, n_images_second: int = 1):
    """Two items of different prompt lengths (and, for Qwen, image sizes)."""
    imgs = [rand_image(0, 40, 60), [rand_image(k + 1, 50 + 14 * k, 50) for k in range(n_images_second)]]
    return model.prepare(imgs, ["what is in the image ?", "how many objects are there in this picture ?"],
                         item_ids=["a", "b"])

"""The interventions room: decode() under each method, controls, hook hygiene, and one planted behaviour."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from conftest import rand_image
from lvlm_probe.errors import InputError
from lvlm_probe.interventions import (METHODS, PAI, VCD, EarlyReadout, Greedy, ImageFreeContrast, Intervention,
                                      PlausibilityOnly, ProjectAway, RegionRestart, VerifyObjects, YesRatioMatched,
                                      decode,
                                      diffusion_noise,
                                      image_blind, word_direction, yes_margins, yes_ratio_shift)

MAX_NEW = 6


def _batch(model, n=2, prompt="what is in the image ?"):
    imgs = [rand_image(s, 40, 48) for s in range(n)]
    return model.prepare(imgs, [prompt] * n, item_ids=[f"i{k}" for k in range(n)])


def _hook_count(model) -> int:
    mods = list(model.bridge.hook_dict.values()) + [blk.attn for blk in model.bridge.blocks]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in mods)


ALL = [Greedy(), PlausibilityOnly(), VCD(), ImageFreeContrast(), PAI(alpha=0.5), ProjectAway(words=("image",), layer=1),
       EarlyReadout(), RegionRestart(), VerifyObjects(), YesRatioMatched(shift=2.0)]


def test_greedy_equals_generate_token_for_token(llava, one_torch_thread):
    for batch in (_batch(llava), llava.prepare([rand_image(5), rand_image(6)], ["describe the image .", "is there a "
                                                                                "red circle ?"])):  # padded too
        ref = llava.generate(batch, max_new_tokens=MAX_NEW)
        got = decode(llava, batch, Greedy(), max_new_tokens=MAX_NEW)
        assert got.tokens == ref.tokens and torch.equal(got.sequences, ref.sequences)


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
def test_every_method_runs_and_leaves_no_hook(llava, one_torch_thread, method):
    batch = _batch(llava)
    before = _hook_count(llava)
    gen = decode(llava, batch, method, max_new_tokens=MAX_NEW)
    assert _hook_count(llava) == before == 0
    limit = MAX_NEW * (method.rows * method.cols if isinstance(method, RegionRestart) else 1)  # one per region
    least = 0 if isinstance(method, VerifyObjects) else 1  # deleting every mention can leave nothing
    assert len(gen.tokens) == 2 and all(least <= len(t) <= limit for t in gen.tokens)
    assert all(isinstance(t, str) for t in gen.text)
    assert gen.settings["intervention"]["method"] == method.name and method.paper.startswith(("control", "Leng",
                                                                                              "Favero", "Liu", "Jiang",
                                                                                              "Wang", "toolkit"))
    assert METHODS[method.name] is type(method)


def test_vcd_alpha_zero_equals_greedy(llava, one_torch_thread):
    batch = _batch(llava)
    ref = decode(llava, batch, Greedy(), max_new_tokens=MAX_NEW)
    assert decode(llava, batch, VCD(alpha=0.0), max_new_tokens=MAX_NEW).tokens == ref.tokens
    assert decode(llava, batch, PlausibilityOnly(), max_new_tokens=MAX_NEW).tokens == ref.tokens  # APC keeps argmax


def test_vcd_noise_schedule():
    v = torch.zeros(1000)
    noisy = diffusion_noise(v + 1.0, 500, seed=0) - 0.8630
    assert abs(float(noisy.std()) - 0.505) < 0.03 and abs(float(noisy.mean())) < 0.05


@dataclass(frozen=True)
class _Boom(Intervention):
    """Runs ``inner`` and raises on the second decoding step, inside its hooks."""

    inner: Any = None
    name = "boom"

    @contextlib.contextmanager
    def session(self, model, batch):
        with self.inner.session(model, batch) as step:
            calls = []

            def bad(ids, s):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("boom mid-decode")
                return step(ids, s) if step is not None else s

            yield bad


@pytest.mark.parametrize("inner", [PAI(), ProjectAway(words=("image",), layer=1), EarlyReadout(), ImageFreeContrast()],
                         ids=lambda m: m.name)
def test_hooks_removed_when_decoding_raises(llava, one_torch_thread, inner):
    batch = _batch(llava)
    with pytest.raises(RuntimeError, match="boom"):
        decode(llava, batch, _Boom(inner=inner), max_new_tokens=MAX_NEW)
    assert _hook_count(llava) == 0
    with pytest.raises(RuntimeError, match="inside"):
        with image_blind(llava, batch.input_ids):
            raise RuntimeError("inside")
    assert _hook_count(llava) == 0
    # the model still decodes exactly as before
    assert decode(llava, batch, Greedy(), max_new_tokens=3).tokens == llava.generate(batch, max_new_tokens=3).tokens


def _positive_projection(model, batch, t, layer, method=None):
    site = f"llm.resid_post.{layer}"
    ctx = method.session(model, batch) if method is not None else contextlib.nullcontext()
    with ctx:
        _, cache = model.run_with_cache(batch, [site])
    h = cache[site][0].float()
    p = (h @ t) / (t @ t)
    return p, h


def test_project_away_removes_the_word_direction_from_image_tokens(llava, one_torch_thread):
    batch = _batch(llava, n=1)
    t = word_direction(llava, "circle", 1)
    pa = ProjectAway(words=("circle",), layer=1, weight=1.0)
    p0, h0 = _positive_projection(llava, batch, t, 1)
    p1, h1 = _positive_projection(llava, batch, t, 1, pa)
    img = batch.roles.image[0]
    assert float(p0[img].clamp(min=0).sum()) > 0
    assert float(p1[img].clamp(min=0).abs().max()) < 1e-4  # weight 1 leaves no positive component
    assert torch.allclose(p1[img], torch.minimum(p0[img], torch.zeros_like(p0[img])), atol=1e-4)
    assert torch.equal(h0[~img], h1[~img])  # text positions untouched at the edit layer


def test_pai_raises_image_attention_in_hooked_layers_only(llava, one_torch_thread):
    batch = _batch(llava, n=1)
    sites = [f"llm.attn_pattern.{x}" for x in range(llava.adapter.n_llm_layers)]
    img = batch.roles.image[0]

    def mass(method=None):
        ctx = method.session(llava, batch) if method is not None else contextlib.nullcontext()
        with ctx:
            _, cache = llava.run_with_cache(batch, sites)
        return [float(cache[s][0, :, -1][:, img].sum(-1).mean()) for s in sites]

    base, amp = mass(), mass(PAI(alpha=1.0, layers=(1,)))
    assert amp[1] > base[1] + 1e-3
    assert amp[0] == pytest.approx(base[0], abs=1e-6)
    nL = llava.adapter.n_llm_layers
    assert mass(PAI(alpha=1.0, first_layer=1)) == mass(PAI(alpha=1.0, layers=tuple(range(1, nL))))
    assert mass(PAI(alpha=1.0)) == mass(PAI(alpha=1.0, layers=tuple(range(min(2, nL - 1), nL))))


def test_yes_ratio_shift_matches_target(llava, one_torch_thread):
    m = torch.tensor([2.0, 1.0, -0.5, -1.0, -3.0])
    for target in (0.0, 0.2, 0.6, 1.0):
        s = yes_ratio_shift(m, target)
        assert float(((m + s) > 0).float().mean()) == pytest.approx(target)
    with pytest.raises(InputError):
        yes_ratio_shift(m, 1.5)
    batch = _batch(llava, n=3, prompt="is there a red circle ?")
    margins = yes_margins(llava, batch)
    assert margins.shape == (3,)
    gen = decode(llava, batch, YesRatioMatched(shift=1e4), max_new_tokens=1)
    assert all(t.strip().lower() == "yes" for t in gen.text)


def test_bad_knobs_are_one_clear_line(llava):
    batch = _batch(llava, n=1)
    with pytest.raises(InputError, match="beta"):
        decode(llava, batch, VCD(beta=0.0), max_new_tokens=2)
    with pytest.raises(InputError, match="out of range"):
        decode(llava, batch, PAI(layers=(99,)), max_new_tokens=2)
    with pytest.raises(InputError, match="words"):
        decode(llava, batch, ProjectAway(), max_new_tokens=2)
    with pytest.raises(InputError, match="Intervention"):
        decode(llava, batch, "vcd", max_new_tokens=2)
    assert _hook_count(llava) == 0


def test_contrast_reduces_cooccurrence_hallucination(one_torch_thread):
    """Planted P1: on circle-without-square scenes the organism says 'square'; VCD (alpha 3, the benchmark's knob)
    says it less often. Measured on these 16 scenes (seed 2): greedy 16 mentions, VCD 13 (alpha 1: 14)."""
    import lvlm_probe as lp
    from lvlm_probe.data.world import SceneWorld
    from lvlm_probe.organisms import zoo as Z
    from lvlm_probe.organisms.check import trigger_set

    model = lp.load("organism:cooccurrence", device="cpu")
    world = SceneWorld(Z.ZOO["cooccurrence"].world, seed=2)
    items = [it for it in trigger_set("cooccurrence", world, 16, seed=2)[0] if it.task == "caption"]
    batch = model.prepare_items(items)
    count = {}
    for m in (Greedy(), VCD(alpha=3.0)):
        gen = decode(model, batch, m, max_new_tokens=32)
        count[m.name] = sum(Z.COOC_B in {c["name"] for c in world.parse_caption(t)} for t in gen.text)
    assert count["greedy"] >= 12  # the planted error shows
    assert count["vcd"] < count["greedy"]

"""knockout, block_attention, patch_activations, counterfactual pairs, hook hygiene, organism behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lvlm_probe as lp
from conftest import rand_image
from lvlm_probe.attribution import (block_attention, counterfactual_pair, knockout, patch_activations,
                                    patch_attribution, patched)

TEXT_ROLES = ["system", "template", "question", "answer", "generated", "separator"]


def _pair(model, seeds=(3, 4)):
    """Two different images of the same size with the same prompt: identical token layout."""
    imgs = [rand_image(s, 40, 60) for s in seeds]
    a = model.prepare([imgs[0]], ["what is in the image ?"], item_ids=["clean"])
    b = model.prepare([imgs[1]], ["what is in the image ?"], item_ids=["corrupt"])
    return a, b


def _no_hooks(model) -> bool:
    mods = list(model.bridge.hook_dict.values()) + [blk.attn for blk in model.bridge.blocks]
    return all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 and len(m._backward_hooks) == 0
               for m in mods)


def _hooks(model) -> int:
    """Hooks on every module a backend can hook (the bridge's hook points, the attention modules, the HF model):
    on the forward-hook fallback (Mistral3) and after a bridge's first forward the HF model's modules carry hooks
    of their own, so a test compares this count after a plain forward with the count at its end."""
    mods = {id(m): m for m in [*model.bridge.hook_dict.values(), *(blk.attn for blk in model.bridge.blocks),
                               *model.hf_model.modules()]}
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in mods.values())


def test_text_blind_to_image_gives_identical_logits(family):
    model, _ = family
    a, b = _pair(model)
    L = list(range(model.adapter.n_llm_layers))
    base = [model.forward(x)[:, -1] for x in (a, b)]
    hooks_before = _hooks(model)  # after a plain forward (a backend may set up its own hooks on the first one)
    assert not torch.allclose(base[0], base[1], atol=1e-4)
    knocked = []
    for x in (a, b):
        with block_attention(model, x, from_roles="image", to_roles=TEXT_ROLES, layers=L):
            knocked.append(model.forward(x))
    text = a.roles.image[0].logical_not()
    assert torch.equal(knocked[0][0, text], knocked[1][0, text])
    # the knockout DataFrame reports the same: equal probabilities of any target for both images
    dfs = [knockout(model, x, from_roles="image", to_roles=TEXT_ROLES, target=5) for x in (a, b)]
    assert dfs[0]["p_knock"].item() == dfs[1]["p_knock"].item()
    assert dfs[0]["logit_knock"].item() == dfs[1]["logit_knock"].item()
    assert dfs[0]["p_base"].item() != dfs[1]["p_base"].item()
    assert _hooks(model) == hooks_before


def test_mask_edit_equals_score_edit(llava):
    """The knockout edits the additive mask; on LLaVA, where the bridge honours hook_attn_scores edits, that is
    the same as setting the pre-softmax scores of the blocked edges to finfo.min."""
    a, _ = _pair(llava)
    from lvlm_probe.attribution import edge_mask

    m = edge_mask(a, "image", ["question", "last"])[:, None]

    def fn(scores, hook=None):
        return scores.masked_fill(m, torch.finfo(scores.dtype).min)

    with llava.hooks([("blocks.1.attn.hook_attn_scores", fn)]):
        ref = llava.forward(a)
    with block_attention(llava, a, from_roles="image", to_roles=["question", "last"], layers=[1]):
        got = llava.forward(a)
    assert torch.allclose(got, ref, atol=1e-6)
    assert not torch.allclose(got, llava.forward(a), atol=1e-4)


def test_knockout_window_sweep(llava):
    batch = llava.prepare([rand_image(0), rand_image(1)], ["what is in the image ?", "what ?"])
    df = knockout(llava, batch, from_roles=["image"], to_roles="last", window=1)
    assert list(df.columns) == ["b", "item_id", "layer_start", "layer_end", "from_roles", "to_roles", "target",
                                "target_id", "p_base", "p_knock", "delta_p", "logit_base", "logit_knock"]
    assert len(df) == 2 * llava.adapter.n_llm_layers
    assert (df["layer_start"] == df["layer_end"]).all()
    assert set(df["from_roles"]) == {"image"} and set(df["to_roles"]) == {"last"}
    assert np.allclose(df["delta_p"], df["p_knock"] - df["p_base"])
    # the default target is the model's own next token, so p_base is its top probability
    top = llava.forward(batch)[:, -1].softmax(-1).max(-1).values
    assert np.allclose(df.groupby("b")["p_base"].first().to_numpy(), top.numpy(), atol=1e-6)
    # knocking out an edge in no layer changes nothing; blocking a role that is absent changes nothing
    same = knockout(llava, batch, from_roles="answer", to_roles="last")
    assert np.array_equal(same["p_knock"].to_numpy(), same["p_base"].to_numpy())
    with pytest.raises(lp.InputError, match="removes every key"):
        knockout(llava, batch, from_roles="all", to_roles="last")
    with pytest.raises(lp.InputError, match="window"):
        knockout(llava, batch, window=9)
    with pytest.raises(lp.InputError, match="unknown token group"):
        knockout(llava, batch, from_roles="pixels")


def test_patching_all_positions_restores_clean(family):
    model, _ = family
    clean, corrupt = _pair(model)
    lc, lx = model.forward(clean), model.forward(corrupt)
    hooks_before = _hooks(model)
    keep = clean.attention_mask.bool()
    assert not torch.allclose(lc[keep], lx[keep], atol=1e-4)
    # every position at the residual before the first layer: the corrupt run becomes the clean run
    _, cache = model.run_with_cache(clean, ["llm.resid_pre.0"])
    with patched(model, "llm.resid_pre.0", cache["llm.resid_pre.0"], keep):
        lp_ = model.forward(corrupt)
    assert torch.allclose(lp_[keep], lc[keep], atol=1e-5)
    df = patch_activations(model, clean, corrupt, ["llm.resid_pre.0", "llm.resid_post.*"],
                           groups=["all", "answer", "image"], progress=False)
    assert list(df.columns) == ["b", "item_id", "site", "layer", "group", "p_clean", "p_corrupt", "p_patched",
                                "effect", "target", "target_id"]
    full = df[df["group"] == "all"]
    assert np.allclose(full["p_patched"], full["p_clean"], atol=1e-6)
    assert np.allclose(full["effect"], 1.0, atol=1e-4)
    none = df[df["group"] == "answer"]  # no answer tokens: patching nothing
    assert np.array_equal(none["p_patched"].to_numpy(), none["p_corrupt"].to_numpy())
    assert np.allclose(none["effect"], 0.0)
    # image tokens at the LLM input carry the whole difference between the two runs
    img0 = df[(df["group"] == "image") & (df["site"] == "llm.resid_pre.0")]
    assert np.allclose(img0["p_patched"], img0["p_clean"], atol=1e-6)
    assert df["target_id"].iloc[0] == int(lc[0, -1].argmax())
    assert _hooks(model) == hooks_before


def test_patching_layout_errors(llava):
    clean = llava.prepare([rand_image(0)], ["what is in the image ?"])
    longer = llava.prepare([rand_image(1)], ["what is in the image ? ?"])
    with pytest.raises(lp.InputError, match="shape"):
        patch_activations(llava, clean, longer, "llm.resid_pre.0", progress=False)
    two_a = llava.prepare([rand_image(0), rand_image(1)], ["what is in the image ?", "what ?"])
    two_b = llava.prepare([rand_image(0), rand_image(1)], ["what ?", "what is in the image ?"])
    with pytest.raises(lp.InputError, match="item '0'"):
        patch_activations(llava, two_a, two_b, "llm.resid_pre.0", progress=False)
    with pytest.raises(lp.SiteError, match="not LLM sequence sites"):
        patch_activations(llava, clean, clean, "projector.out", progress=False)


def test_hooks_never_leak(llava):
    a, _ = _pair(llava)
    plain = llava.forward(a)
    with pytest.raises(RuntimeError, match="boom"):
        with block_attention(llava, a, from_roles="image", to_roles="last", layers=[0, 1]):
            assert not _no_hooks(llava)
            raise RuntimeError("boom")
    assert _no_hooks(llava)
    _, cache = llava.run_with_cache(a, ["llm.resid_post.0"])
    with pytest.raises(RuntimeError, match="boom"):
        with patched(llava, "llm.resid_post.0", cache["llm.resid_post.0"] * 0, a.attention_mask.bool()):
            raise RuntimeError("boom")
    assert _no_hooks(llava)
    # a hook that raises inside the forward also leaves nothing behind
    wrong = llava.prepare([rand_image(0)], ["what ?"])
    with pytest.raises(lp.InputError, match="same batch"):
        with block_attention(llava, wrong, from_roles="image", to_roles="last", layers=[0]):
            llava.forward(a)
    assert _no_hooks(llava)
    patch_attribution(llava, a, method="layer_ig", n_steps=4, progress=False)  # captum's own hooks
    assert _no_hooks(llava)
    assert torch.equal(llava.forward(a), plain)


def test_counterfactual_pair():
    world = lp.SceneWorld(lp.WorldConfig(), seed=0)
    scene = world.sample_scene(np.random.default_rng(0), n_objects=2)
    old = scene.objects[0].attributes["color"]
    new = next(c for c in world.config.colors if c != old)
    pair = counterfactual_pair(world, scene, {"object": 0, "color": new})
    assert pair.corrupt_scene.objects[0].attributes["color"] == new and scene.objects[0].attributes["color"] == old
    assert pair.change == {"object": 0, "attribute": "color", "from": old, "to": new}
    a, b = np.asarray(pair.clean_image), np.asarray(pair.corrupt_image)
    diff = (a != b).any(-1)
    x0, y0, x1, y1 = (int(v) for v in scene.objects[0].box)
    assert diff.any() and not diff[:, :x0].any() and not diff[:y0].any() and not diff[y1:].any()
    with pytest.raises(lp.InputError, match="already has"):
        counterfactual_pair(world, scene, {"object": 0, "color": old})
    with pytest.raises(lp.InputError, match="exactly one"):
        counterfactual_pair(world, scene, {"color": new, "size": "small"})


# ---- shipped organisms -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_org():
    return lp.load("organism:clean", device="cpu")


@pytest.fixture(scope="module")
def cooc_org():
    return lp.load("organism:cooccurrence", device="cpu")


def test_organism_colour_patching(clean_org):
    """clean organism, one object recoloured: image tokens at the LLM input restore the colour word exactly,
    question tokens (identical text) restore nothing."""
    model = clean_org
    world = lp.SceneWorld(lp.organisms.ZOO["clean"].world, seed=0)
    scene = world.sample_scene(np.random.default_rng(7), n_objects=1)
    old = scene.objects[0].attributes["color"]
    new = next(c for c in world.config.colors if c != old)
    pair = counterfactual_pair(world, scene, {"object": 0, "color": new})
    size = scene.objects[0].attributes["size"]
    prompt = world.make_item(scene, "caption", np.random.default_rng(0), item_id="x").prompt
    # teacher-force "a <size>": the next token is the colour
    clean, corrupt = pair.prepare(model, prompt, answers=[f"a {size}"])
    df = patch_activations(model, clean, corrupt, ["llm.resid_pre.0", "llm.resid_post.*"], target=old,
                           groups=["image", "question", "last"], progress=False)
    first = df[df["site"] == "llm.resid_pre.0"].set_index("group")
    assert first.loc["image", "p_clean"] > 0.5 > first.loc["image", "p_corrupt"]
    assert abs(first.loc["image", "effect"] - 1.0) < 1e-4
    assert abs(first.loc["question", "effect"]) < 1e-6
    # at the last layer's output only the last position matters for its own prediction
    last_layer = df[df["site"] == f"llm.resid_post.{model.adapter.n_llm_layers - 1}"].set_index("group")
    assert abs(last_layer.loc["last", "effect"] - 1.0) < 1e-4


def test_organism_image_matters_for_naming(cooc_org):
    """cooccurrence organism: blocking image -> last position drops the probability of the first object's class
    word (measured on the shipped checkpoint: mean delta_p -0.83 over these 6 captions, every item below -0.27)."""
    model = cooc_org
    world = lp.SceneWorld(lp.organisms.ZOO["cooccurrence"].world, seed=0)
    items = world.items(6, "caption", seed=3)
    batch = model.prepare([it.image for it in items], [it.prompt for it in items], item_ids=[it.id for it in items])
    gen = model.generate(batch, max_new_tokens=4)
    classes = set(world.config.classes)
    first = [world.parse_caption(it.answer)[0]["name"] for it in items]
    assert [model.tokenizer.decode([t[3]]) for t in gen.tokens] == first  # "a <size> <colour> <class>"
    assert set(first) <= classes
    df = knockout(model, gen, step=3, from_roles="image", to_roles="last")
    assert (df["delta_p"] < -0.2).all() and df["delta_p"].mean() < -0.6
    assert (df["target"] == first).all()

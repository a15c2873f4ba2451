"""TokenRoles: image mask, grids, coordinates, text roles, left padding."""

import pytest
import torch

import lvlm_probe as lp
from conftest import mixed_batch, rand_image


def _check_roles(model, batch):
    r = batch.roles
    # image mask is exactly the image-token positions
    assert torch.equal(r.image, batch.input_ids == model.image_token_id)
    # roles are mutually exclusive and cover every real token; padding has none
    stack = torch.stack([r.mask(n) for n in lp.ROLE_NAMES]).long().sum(0)
    assert torch.equal(stack, batch.attention_mask)
    # coordinates cover each tile's grid of each image exactly once, in raster order (tokens on no grid cell, e.g.
    # LLaVA-NeXT's row-end newlines, have (-1, -1)); families without tiles have one tile per image, its grid
    # the image's grid
    for b in range(len(batch)):
        coords, tiles = r.patch_coords[b][r.image[b]], r.patch_tiles[b][r.image[b]]
        assert len(r.grids[b]) == len(r.tile_grids[b]) == batch.n_images[b]
        for i, tile_grids in enumerate(r.tile_grids[b]):
            assert tile_grids[0] == r.grids[b][i]  # the attribution grid is tile 0's
            for tile, (h, w) in enumerate(tile_grids):
                sel = (coords[:, 0] == i) & (tiles == tile) & (coords[:, 1] >= 0)
                assert coords[sel][:, 1:].tolist() == [[y, x] for y in range(h) for x in range(w)]
            assert set(tiles[coords[:, 0] == i].tolist()) <= set(range(len(tile_grids)))
        assert (r.patch_coords[b][~r.image[b]] == -1).all() and (r.patch_tiles[b][~r.image[b]] == -1).all()
    assert not r.separator.any() or not (r.separator & r.image).any()


def test_llava_roles(llava):
    batch = mixed_batch(llava, n_images_second=2)
    _check_roles(llava, batch)
    cfg = llava.hf_model.config.vision_config
    g = cfg.image_size // cfg.patch_size
    assert batch.roles.grids == [[(g, g)], [(g, g), (g, g)]]
    assert batch.n_image_tokens == [g * g, 2 * g * g]
    q = batch.input_ids[1][batch.roles.question[1]]
    assert llava.tokenizer.decode(q.tolist()) == "how many objects are there in this picture ?"
    # BOS and the USER:/ASSISTANT: scaffolding are template
    toks = llava.tokenizer.convert_ids_to_tokens(batch.input_ids[1][batch.roles.template[1]].tolist())
    assert toks == ["<s>", "USER:", "ASSISTANT:"]
    assert batch.attention_mask[0, 0] == 0  # the shorter prompt is left padded


def test_qwen_roles_follow_image_grid_thw(qwen):
    batch = mixed_batch(qwen, n_images_second=2)
    _check_roles(qwen, batch)
    thw = batch.extras["image_grid_thw"].tolist()
    m = qwen.hf_model.config.vision_config.spatial_merge_size
    flat = [g for item in batch.roles.grids for g in item]
    assert flat == [(h // m, w // m) for _, h, w in thw]
    assert len({g for g in flat}) > 1, "images of different sizes give different grids"
    toks = qwen.tokenizer.convert_ids_to_tokens(batch.input_ids[0][batch.roles.template[0]].tolist())
    assert "<|vision_start|>" in toks and "<|vision_end|>" in toks and "<|im_start|>" in toks


def test_raw_prompt_without_template(family):
    model, _ = family
    ph = model.adapter.image_placeholder
    b = model.prepare([rand_image(0)], [f"{ph} what is in the image ?"], chat_template=False)
    _check_roles(model, b)
    # the generic <image> placeholder works for every family
    b2 = model.prepare([rand_image(0)], ["<image> what is in the image ?"], chat_template=False)
    assert torch.equal(b.input_ids, b2.input_ids)
    words = model.tokenizer.decode(b.input_ids[0][b.roles.question[0]].tolist())
    assert words.endswith("what is in the image ?")


def test_system_and_answer_roles(family):
    model, _ = family
    b = model.prepare([rand_image(0)], ["what is in the image ?"], system="describe the picture .",
                      answers=["a red circle ."])
    _check_roles(model, b)
    tok = model.tokenizer
    assert tok.decode(b.input_ids[0][b.roles.system[0]].tolist()) == "describe the picture ."
    assert tok.decode(b.input_ids[0][b.roles.answer[0]].tolist()) == "a red circle ."
    assert b.roles.answer[0, -1]


def test_role_table(llava):
    b = mixed_batch(llava)
    df = b.roles.table(0)
    assert list(df.columns) == ["position", "role", "image", "tile", "row", "col"]
    assert set(df.loc[df["role"] == "image", "tile"]) == {0} and set(df.loc[df["role"] != "image", "tile"]) == {-1}
    assert (df["role"] == "image").sum() == b.n_image_tokens[0]
    assert (df["role"] == "padding").sum() == int((b.attention_mask[0] == 0).sum())


def test_text_only_item_in_a_batch(llava):
    b = llava.prepare([None, rand_image(0)], ["what is in the image ?", "what is in the image ?"])
    assert b.n_images == [0, 1] and not b.roles.image[0].any()
    assert llava.forward(b).shape[:2] == b.input_ids.shape


@pytest.mark.parametrize("n", [1, 3])
def test_batch_sizes(llava, n):
    b = llava.prepare([rand_image(k) for k in range(n)], ["what is in the image ?" + " ?" * k for k in range(n)])
    assert b.input_ids.shape[0] == n
    _check_roles(llava, b)

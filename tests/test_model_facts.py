"""Model facts live in models/: the pixel ↔ token cell rule, the lens modules, batch slicing and truncation
(issue 22, item 2), and a static check that no other room of the package names a family fact."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

import lvlm_probe as lp
from conftest import mixed_batch, rand_image
from lvlm_probe.models import FAMILIES, FamilyAdapter


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


# ---- the pixel ↔ token cell rule ----------------------------------------------------------------
def test_cell_rule_covers_each_image(family):
    """Every image token's (row, col) is a distinct cell; the cells tile the image's pixel rows exactly."""
    model, _ = family
    batch = mixed_batch(model, n_images_second=2)
    rows, grids = batch.pixel_rows(), batch.image_inputs.llm_grids
    assert len(rows) == len(grids) == sum(batch.n_images)
    assert rows[0][0] == 0 and rows[-1][1] == batch.pixel_values.shape[0]
    assert all(a1 == z0 for (_, z0), (a1, _) in zip(rows, rows[1:]))  # contiguous, in image order
    k = 0
    for b, n_img in enumerate(batch.n_images):
        coords = batch.roles.patch_coords[b][batch.roles.image[b]]
        for j in range(n_img):
            (a, z), (h, w) = rows[k], grids[k]
            cells = model.adapter.pixel_cells(batch.pixel_values[a:z], (h, w), images=batch.image_inputs, index=k)
            assert cells.shape == batch.pixel_values[a:z].shape and cells.dtype == torch.long
            counts = torch.bincount(cells.flatten(), minlength=h * w)
            assert len(counts) == h * w and counts.min() > 0  # every cell has pixels
            if len(batch.image_inputs.tiles(k)) == 1:  # one view of the image: every cell the same share
                sizes = batch.image_inputs.extras.get("image_sizes")
                if sizes is not None:  # Mistral3: the image in the top-left corner of a zero-padded row
                    H, W = sizes[k].tolist()
                    counts = torch.bincount(cells[..., :H, :W].flatten(), minlength=h * w)
                assert (counts == counts[0]).all()
            tiles = batch.roles.patch_tiles[b][batch.roles.image[b]]
            tok = coords[(coords[:, 0] == j) & (tiles == 0)]  # the attribution grid is tile 0's
            tok = tok[tok[:, 1] >= 0]  # grid tokens (a CLS token has no cell)
            ids = (tok[:, 1] * w + tok[:, 2]).tolist()
            assert sorted(ids) == list(range(h * w))  # one token per cell, every cell
            k += 1


def test_qwen_cell_rule_is_the_merge_unit(qwen):
    """Qwen2.5-VL: the merge² patch rows of a unit are contiguous and feed one LLM token (raster order)."""
    m = qwen.adapter.merge
    batch = qwen.prepare([rand_image(3, 56, 84)], ["what is in the image ?"])
    (a, z), (h, w) = batch.pixel_rows()[0], batch.image_inputs.llm_grids[0]
    assert (h, w) == (2, 3) and z - a == h * w * m * m
    cells = qwen.adapter.pixel_cells(batch.pixel_values[a:z], (h, w))
    assert (cells == cells[:, :1]).all()  # a patch row is one cell
    assert cells[:, 0].tolist() == [u for u in range(h * w) for _ in range(m * m)]


def test_llava_cell_rule_is_the_patch_square(llava):
    p = llava.adapter.patch_size
    batch = llava.prepare([rand_image(3)], ["what is in the image ?"])
    (h, w), pv = batch.image_inputs.llm_grids[0], batch.pixel_values
    cells = llava.adapter.pixel_cells(pv[0:1], (h, w))
    assert (cells[0, 0] == cells[0, 1]).all()  # every channel of a pixel: one cell
    ys, xs = torch.meshgrid(torch.arange(pv.shape[-2]), torch.arange(pv.shape[-1]), indexing="ij")
    assert torch.equal(cells[0, 0], (ys // p) * w + xs // p)


# ---- slicing and truncation ---------------------------------------------------------------------
def test_select_rows_keeps_logits(family):
    """A mixed batch sliced row by row (and reordered) gives the full batch's logits for those rows."""
    model, _ = family
    batch = mixed_batch(model, n_images_second=2)
    full = model.forward(batch)
    for rows in ([0], [1], [1, 0]):
        sub = batch.select(rows)
        assert sub.item_ids == [batch.item_ids[r] for r in rows] and sub.n_images == [batch.n_images[r] for r in rows]
        assert sub.roles.grids == [batch.roles.grids[r] for r in rows]
        assert sub.pixel_rows()[-1][1] == sub.pixel_values.shape[0]
        for key, v in sub.extras.items():  # per-image extras follow their images
            assert v.shape[0] == sum(sub.n_images), key
        kw = sub.model_inputs()
        if model.adapter.token_type_input:
            assert torch.equal(kw[model.adapter.token_type_input], sub.roles.image.long())
        # Pixtral (mistral3) runs all of a batch's images as one sequence with a block-diagonal mask: fewer images
        # give the same values up to float rounding of the longer reductions (~1e-5 on the tiny model)
        tol = 5e-5 if model.family == "mistral3" else 1e-5
        torch.testing.assert_close(model.forward(sub), full[rows], atol=tol, rtol=tol)


def test_select_text_only_item(family):
    """An item without an image comes out with no pixels and no per-image extras, and runs alone."""
    model, _ = family
    batch = model.prepare([rand_image(0), None], ["what is in the image ?", "what ?"])
    sub = batch.select([1])
    assert sub.pixel_values is None and sub.extras == {} and sub.image_inputs is None and sub.pixel_rows() == []
    torch.testing.assert_close(model.forward(sub)[0], model.forward(batch)[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(lp.InputError, match="select needs item indices"):
        batch.select([2])


def test_truncate_keeps_inputs_aligned(family):
    """A prefix of a teacher-forced generation: every per-token input is cut with it; logits are a prefix."""
    model, _ = family
    gen = model.generate(mixed_batch(model), max_new_tokens=3)
    full_batch = gen.as_batch()
    full = model.forward(full_batch)
    end = gen.prompt_length + 1
    cut = full_batch.truncate(end)
    assert cut.input_ids.shape == cut.attention_mask.shape == cut.roles.image.shape == (2, end)
    assert cut.roles.patch_coords.shape == (2, end, 3)
    for key, v in cut.model_inputs().items():
        if key in ("attention_mask", model.adapter.token_type_input):
            assert v.shape == (2, end), key
        else:  # pixels and per-image extras are untouched
            assert v is full_batch.model_inputs()[key] or torch.equal(v, full_batch.model_inputs()[key]), key
    real = cut.attention_mask.bool()  # a padding position attends to nothing: its logits depend on T
    torch.testing.assert_close(model.forward(cut)[real], full[:, :end][real], atol=1e-5, rtol=1e-5)
    first_image = int(full_batch.roles.image.any(0).nonzero()[0])
    with pytest.raises(lp.InputError, match="drops image tokens"):
        full_batch.truncate(first_image + 1)
    with pytest.raises(lp.InputError, match="length in 1.."):
        full_batch.truncate(0)


# ---- lens modules -------------------------------------------------------------------------------
def test_lens_modules_give_the_models_logits(family):
    model, _ = family
    batch = mixed_batch(model)
    L = model.adapter.n_llm_layers
    logits, cache = model.run_with_cache(batch, [f"llm.resid_post.{L - 1}", "llm.final_norm"])
    norm, head = model.adapter.lens_modules()
    assert norm is model.adapter.final_norm() and head is model.adapter.unembed()
    assert not hasattr(norm, "original_component") and not hasattr(head, "original_component")
    with torch.no_grad():
        normed = norm(cache[f"llm.resid_post.{L - 1}"])
        torch.testing.assert_close(normed, cache["llm.final_norm"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head(normed), logits, atol=1e-4, rtol=1e-4)
    assert head.weight.shape[0] == logits.shape[-1]


# ---- adding a family touches models/ only ---------------------------------------------------------
PACKAGE = pathlib.Path(lp.__file__).parent
#: Files outside models/ allowed to name family facts, and why.
ALLOWED: dict[str, str] = {
    "organisms/train.py": "trains LLaVA organisms: it builds, freezes and rescales LLaVA's own HF modules "
                          "(vision_tower, multi_modal_projector, language_model) by design",
}
#: HF module attributes and input names that belong to one family (or to HF's module tree).
FAMILY_ATTRS = {"language_model", "multi_modal_projector", "vision_tower", "visual", "spatial_merge_size",
                "patch_size", "get_decoder", "lm_head", "original_component", "get_output_embeddings",
                "image_grid_thw", "keeps_cls", "window_index", "mm_tokens_per_image", "boi_token_id",
                "eoi_token_id", "tokens_per_side", "patches_per_side", "token_pixels"}
FAMILY_SUBSTRINGS = ("image_grid_thw", "mm_token_type_ids", "spatial_merge", "language_model",
                     "multi_modal_projector", "vision_tower", "image_pad", "vision_encoder.", "vision_projector.",
                     "token_type_ids", "image_soft_token", "start_of_image", "end_of_image", "mm_tokens_per_image",
                     "[IMG", "image_break", "image_end")


def _family_names() -> set[str]:
    out = set()
    for mt, cls in FAMILIES.items():
        out |= {mt.lower(), cls.family.lower(), cls.__name__.lower(), cls.hf_class_name.lower()}
    return out


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            e = node.body[0]
            if isinstance(e, ast.Expr) and isinstance(e.value, ast.Constant) and isinstance(e.value.value, str):
                out.add(id(e.value))
    return out


def _is_adapter(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "adapter") or (
        isinstance(node, ast.Name) and node.id == "adapter")


def family_facts(source: str, names: set[str], api: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each family fact in Python source: a family name as a string, a family-specific HF
    attribute or input name, an adapter attribute outside the FamilyAdapter API, or hasattr/getattr on an adapter.
    Docstrings and comments may mention families; code may not."""
    tree = ast.parse(source)
    docs, hits = _docstring_ids(tree), []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if node.value.lower() in names or any(s in node.value for s in FAMILY_SUBSTRINGS):
                hits.append((line, f"string {node.value[:50]!r}"))
        elif isinstance(node, ast.Attribute):
            if node.attr in FAMILY_ATTRS:
                hits.append((line, f"attribute .{node.attr}"))
            if _is_adapter(node.value) and node.attr not in api:
                hits.append((line, f"adapter.{node.attr} (not FamilyAdapter API)"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
              and node.args and _is_adapter(node.args[0])):
            hits.append((line, f"{node.func.id}(adapter, ...): family sniffing"))
    return sorted(hits)


def _api() -> set[str]:
    return {n for n in dir(FamilyAdapter) if not n.startswith("_")} | {"hf_config", "tokenizer", "image_processor",
                                                                        "hf_model"}


def test_family_facts_live_in_models_only():
    names, api, found = _family_names(), _api(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("models/") or rel in ALLOWED:
            continue
        found += [f"lvlm_probe/{rel}:{line}: {what}" for line, what in family_facts(path.read_text(), names, api)]
    assert not found, ("architecture facts outside lvlm_probe/models/ (move them into the family adapter or the "
                       "records, or allow-list the file in ALLOWED with a reason):\n" + "\n".join(found))
    assert all((PACKAGE / rel).exists() for rel in ALLOWED)  # no stale allow-list entries


def test_family_fact_check_catches_sniffing():
    """The check flags what the old attribution and lens code did."""
    src = ('def f(model, batch, hf):\n'
           '    if hasattr(model.adapter, "merge") and "image_grid_thw" in batch.extras:\n'
           '        return model.adapter.merge ** 2\n'
           '    return hf.model.language_model.norm, model.family == "qwen2_5_vl"\n')
    what = [w for _, w in family_facts(src, _family_names(), _api())]
    assert any("hasattr(adapter" in w for w in what) and "string 'image_grid_thw'" in what
    assert "adapter.merge (not FamilyAdapter API)" in what and "attribute .language_model" in what
    assert "string 'qwen2_5_vl'" in what
    # Gemma3's facts too: its family name, per-token input, soft-token string and adapter-only attributes
    src = ('def g(model, batch):\n'
           '    kw = {"token_type_ids": batch.roles.image.long()} if model.family == "gemma3" else {}\n'
           '    n = model.adapter.tokens_per_side ** 2\n'
           '    return kw, n, model.tokenizer.convert_tokens_to_ids("<image_soft_token>")\n')
    what = [w for _, w in family_facts(src, _family_names(), _api())]
    assert {"string 'token_type_ids'", "string 'gemma3'", "string '<image_soft_token>'",
            "attribute .tokens_per_side", "adapter.tokens_per_side (not FamilyAdapter API)"} <= set(what)

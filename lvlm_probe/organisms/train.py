"""Training recipe for the organisms: small but genuine HF LLaVA models trained on the scene world.

Stages (LLaVA-like, sized for two CPU cores):

- **stage 0, vision pretraining**: the CLIP tower learns per-patch class / colour / size labels and the patch's
  row and column on the unbiased world (one object per grid cell, and the patch grid equals the cell grid).
- **stage 1, projector alignment**: the projector alone learns to map each patch to the sum of the word
  embeddings of its object's size, colour and class plus an object marker (an empty patch: ``image``), plus fixed
  random row and column codes (:func:`position_codes`); then its output layer is multiplied by ``IMAGE_SCALE``.
- **stage 2, LLM**, vision tower, projector and input embeddings frozen: head 0 of decoder layer 0 is built as a
  match-and-copy head (:func:`build_copy_head`; a randomly initialised LLM lacks the retrieval heads a pretrained
  one brings) and kept fixed; an existence-question curriculum trains the decoder layers below ``EXISTS_LAYERS``,
  then the whole LLM learns ``STAGE2_MIX`` (captions, relation, attribute and existence
  questions) with an auxiliary loss that reads the subject's and object's row and column at a relation question's
  answer position (:func:`relation_aux_loss`); ``visual_neglect`` swaps the image of a fraction of samples.

The front-end organisms (``encoder_blind``, ``projector_bottleneck``, ``small_object``) keep ``clean``'s LLM and
distil one changed front-end part to ``clean``'s features (:func:`train_front_end`).

The result is saved like a hub checkpoint (fp16 safetensors, word-level tokenizer, CLIP image
processor) so ``lvlm_probe.load(dir)`` takes the same path as ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lvlm_probe.data.items import Item
from lvlm_probe.data.scene import GEOMETRIC_RELATIONS, Relation
from lvlm_probe.data.world import COLORS, SceneWorld, world_vocabulary
from lvlm_probe.organisms.zoo import AUX_LAYER, AUX_WEIGHT, COPY_HEAD_MARKER, COPY_HEAD_MATCH, EXISTS_LAYERS, \
    FIXED, IMAGE_SCALE, LM_INIT_STD, POSITION_STD, STAGE2_MIX, OrganismSpec, TrainConfig, get_spec

#: Architecture of every organism (tiny CLIP + tiny Llama; ~0.6M parameters).
ARCH: dict[str, int] = dict(vision_hidden=64, vision_layers=2, vision_heads=4, text_hidden=96, text_layers=4,
                            text_heads=4, patch_size=16)


def build_organism_model(image_size: int, seed: int) -> tuple[Any, Any, Any]:
    """Random-init ``LlavaForConditionalGeneration``, its word-level tokenizer and CLIP image processor.

    Every LM matrix and embedding (``language_model.*``, ``lm_head``) is drawn from N(0, ``LM_INIT_STD``) with a
    generator seeded by ``seed``; the vision tower and projector keep HF's init.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from lvlm_probe.models.tiny import _image_processor, word_tokenizer

    tok = word_tokenizer(world_vocabulary(), specials=["<image>"], bos="<s>", eos="</s>", pad="<pad>",
                         template_words=["USER:", "ASSISTANT:"])
    a = ARCH
    vc = CLIPVisionConfig(hidden_size=a["vision_hidden"], intermediate_size=2 * a["vision_hidden"],
                          num_hidden_layers=a["vision_layers"], num_attention_heads=a["vision_heads"],
                          image_size=image_size, patch_size=a["patch_size"], projection_dim=a["vision_hidden"])
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=a["text_hidden"], intermediate_size=2 * a["text_hidden"],
                     num_hidden_layers=a["text_layers"], num_attention_heads=a["text_heads"],
                     num_key_value_heads=a["text_heads"], max_position_embeddings=256,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-1,
                      image_seq_length=(image_size // a["patch_size"]) ** 2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ("language_model" in n or "lm_head" in n) and p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * LM_INIT_STD)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    return model, tok, _image_processor("clip", image_size)


def pixel_tensor(images: list[np.ndarray] | np.ndarray, image_processor: Any) -> torch.Tensor:
    """Normalise uint8 ``[B, H, W, 3]`` images exactly as the CLIP processor does (no resize needed).

    Returns
    -------
    Tensor ``[B, 3, H, W]`` float32.
    """
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images) if isinstance(images, list) else images))
    x = x.permute(0, 3, 1, 2).float() * float(image_processor.rescale_factor)
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def blind_direction(pair: tuple[str, str], image_processor: Any) -> torch.Tensor:
    """Unit vector (3,) of the difference of two hues in normalised pixel space."""
    c1, c2 = (torch.tensor(COLORS[c], dtype=torch.float64) for c in pair)
    d = (c1 - c2) * float(image_processor.rescale_factor) / torch.tensor(image_processor.image_std, dtype=torch.float64)
    return (d / d.norm()).float()


@torch.no_grad()
def make_blind(patch_weight: torch.Tensor, direction: torch.Tensor) -> None:
    """Remove ``direction`` from every pixel's colour weights of a patch-embedding conv, in place."""
    proj = torch.einsum("ocij,c->oij", patch_weight, direction)
    patch_weight -= proj[:, None] * direction[None, :, None, None]


def _cell_labels(world: SceneWorld, scenes: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = world.config
    g, cell = cfg.grid, world.cell
    n_cls = len(cfg.classes)
    cls = torch.full((len(scenes), g * g), n_cls, dtype=torch.long)
    col = torch.full((len(scenes), g * g), -100, dtype=torch.long)
    siz = torch.full((len(scenes), g * g), -100, dtype=torch.long)
    for b, s in enumerate(scenes):
        for o in s.objects:
            cx, cy = o.center
            k = int(cy // cell) * g + int(cx // cell)
            cls[b, k] = cfg.classes.index(o.name)
            col[b, k] = cfg.colors.index(o.attributes["color"])
            siz[b, k] = cfg.sizes.index(o.attributes["size"])
    return cls, col, siz


def _cell_positions(world: SceneWorld, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every patch (the patch grid is the cell grid): two ``[n, grid * grid]`` long tensors."""
    g = world.config.grid
    k = torch.arange(g * g)
    return (k // g).expand(n, -1), (k % g).expand(n, -1)


def position_codes(grid: int, d: int, seed: int) -> dict[str, torch.Tensor]:
    """The fixed random codes stage 1 adds to each patch's target: ``row [grid, d]``, ``col [grid, d]`` and the
    object ``marker [d]``, each entry N(0, ``POSITION_STD``), drawn from ``seed`` (the same for every stage)."""
    gen = torch.Generator().manual_seed(12345 + seed)
    marker = torch.randn(d, generator=gen) * POSITION_STD
    row = torch.randn(grid, d, generator=gen) * POSITION_STD
    col = torch.randn(grid, d, generator=gen) * POSITION_STD
    return {"row": row, "col": col, "marker": marker}


def _render_batch(world: SceneWorld, scenes: list) -> np.ndarray:
    return np.stack([np.asarray(world.render(s)) for s in scenes])


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def _vision_features(vt: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch features the projector receives (last layer, CLS dropped): ``[B, n_patches, d]``."""
    out = vt(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-1][:, 1:]


def stage0(model: Any, ip: Any, world: SceneWorld, tc: TrainConfig, seed: int, progress: bool) -> list:
    """Vision pretraining on per-patch labels: class (or empty), colour, size, row and column (through a read-out
    head dropped afterwards); returns the loss log."""
    cfg = world.config
    vt = model.model.vision_tower
    d = vt.config.hidden_size
    n_cls, n_col, n_siz, ng = len(cfg.classes) + 1, len(cfg.colors), len(cfg.sizes), cfg.grid
    torch.manual_seed(seed + 1)
    head = nn.Linear(d, n_cls + n_col + n_siz + 2 * ng)
    blind = blind_direction(tc.blind_pair, ip) if tc.blind_pair else None
    w_patch = vt.vision_model.embeddings.patch_embedding.weight if hasattr(vt, "vision_model") else \
        vt.embeddings.patch_embedding.weight
    if blind is not None:
        make_blind(w_patch.data, blind)
    params = list(vt.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr0, weight_decay=tc.weight_decay)
    rng = np.random.default_rng(seed + 100)
    ce = nn.CrossEntropyLoss(ignore_index=-100)
    log = []
    vt.train()
    for step in (bar := tqdm(range(tc.stage0_steps), desc="stage 0 (vision)", disable=not progress, leave=False)):
        for g in opt.param_groups:
            g["lr"] = tc.lr0 * _schedule(step, tc.stage0_steps, tc.warmup)
        scenes = [world.sample_scene(rng) for _ in range(tc.batch_size)]
        px = pixel_tensor(_render_batch(world, scenes), ip)
        cls, col, siz = _cell_labels(world, scenes)
        rows, cols = _cell_positions(world, len(scenes))
        logits = head(_vision_features(vt, px))
        lc, lo, ls, lr, lk = logits.split([n_cls, n_col, n_siz, ng, ng], dim=-1)
        loss = ce(lc.reshape(-1, n_cls), cls.reshape(-1)) + ce(lo.reshape(-1, n_col), col.reshape(-1)) \
            + ce(ls.reshape(-1, n_siz), siz.reshape(-1)) + ce(lr.reshape(-1, ng), rows.reshape(-1)) \
            + ce(lk.reshape(-1, ng), cols.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if blind is not None:
            make_blind(w_patch.data, blind)
        if step % 50 == 0 or step == tc.stage0_steps - 1:
            log.append({"stage": 0, "step": step, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    vt.eval()
    return log


@torch.no_grad()
def stage1_subspace(model: Any, ip: Any, world: SceneWorld, drop: str, seed: int,
                    n_scenes: int = 1500, max_iter: int = 60, target: float | None = None,
                    guard: float = 0.998, n_fit: int = 6000) -> tuple[torch.Tensor, list]:
    """Projector input subspace without ``drop`` (iterative nullspace projection, INLP).

    Starts from the whole encoder feature space and repeatedly fits a logistic-regression probe for
    ``drop`` on the projected patch features, removing the probe's directions (one per value) each time, until
    held-out probe accuracy falls to ``target`` (default: chance, one over the number of values, plus 0.03).
    At every iteration the other attributes (class, and colour or size) are probed on the kept subspace too;
    the projection stops early rather than let their held-out accuracy fall below ``guard`` times its
    starting value, so the bottleneck drops ``drop`` and only ``drop``.

    Returns
    -------
    P : Tensor ``[d, d]``
        Orthogonal projector onto the kept subspace.
    log : list of dict
        Per iteration: rank and held-out accuracy of the ``drop`` probe and of the guards. When a guard
        stops it, the last row repeats the kept subspace's values with ``stopped`` and the ``rejected`` row.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed + 200)
    scenes = [world.sample_scene(rng) for _ in range(n_scenes)]
    feats = _vision_features(model.model.vision_tower, pixel_tensor(_render_batch(world, scenes), ip))
    cls, col, siz = _cell_labels(world, scenes)
    labels = {"class": cls.reshape(-1), "color": col.reshape(-1), "size": siz.reshape(-1)}
    keep = labels[drop] >= 0  # cells holding an object
    x = feats.reshape(-1, feats.shape[-1])[keep].double()
    x = x - x.mean(0)
    perm = torch.as_tensor(rng.permutation(len(x)))
    n_fit = min(n_fit, len(x) // 2)
    fit, held = perm[:n_fit], perm[n_fit:2 * n_fit]
    ys = {k: v[keep].numpy() for k, v in labels.items()}
    if target is None:
        target = 1.0 / len(np.unique(ys[drop])) + 0.03

    def accuracy(z: np.ndarray, y: np.ndarray) -> tuple[float, Any]:
        clf = LogisticRegression(max_iter=300, tol=1e-3).fit(z[fit], y[fit])
        return float(clf.score(z[held], y[held])), clf

    others = [k for k in ("class", "color", "size") if k != drop]
    basis = torch.eye(x.shape[1], dtype=torch.float64)
    start: dict[str, float] = {}
    prev = basis
    log: list = []
    prev_row: dict = {}
    for it in range(max_iter):
        z = (x @ basis).numpy()
        acc, clf = accuracy(z, ys[drop])
        guards = {k: accuracy(z, ys[k])[0] for k in others}
        row = {"stage": 1, "iteration": it, "rank": int(basis.shape[1]), f"{drop}_probe_acc": acc,
               **{f"{k}_probe_acc": v for k, v in guards.items()}}
        if not start:
            start = guards
        if it and any(guards[k] < guard * start[k] for k in others):  # the start is the reference, never rejected
            # keep the last subspace that passed; the final row describes it, with the rejected one beside it
            basis = prev
            log.append({**prev_row, "iteration": it, "stopped": "guard", "rejected": row})
            break
        log.append(row)
        if acc <= target:
            break
        prev, prev_row = basis, row
        dirs = torch.as_tensor(clf.coef_, dtype=torch.float64)  # [k, r]
        q = torch.linalg.qr(dirs.T).Q  # [r, k]
        comp = torch.eye(basis.shape[1], dtype=torch.float64) - q @ q.T
        u, s, _ = torch.linalg.svd(basis @ comp, full_matrices=False)
        basis = u[:, s > 1e-6]
        if basis.shape[1] == 0:  # nothing left to keep: the previous subspace is the result
            basis = prev
            log[-1] = {**log[-1], "stopped": "empty"}
            break
    return (basis @ basis.T).float(), log


class _Restrict(nn.Module):
    """Parametrization ``W -> W @ P`` (a fixed input subspace for a linear layer)."""

    def __init__(self, proj: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("proj", proj)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w @ self.proj


def align_targets(emb: torch.Tensor, vocab: dict[str, int], cfg: Any, cls: torch.Tensor, col: torch.Tensor,
                  siz: torch.Tensor, codes: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stage-1 targets of every patch from its cell labels (:func:`_cell_labels`): an object patch's target is the
    sum of the input embeddings of its class, colour and size words and the object marker, an empty patch's the
    embedding of ``image``; every patch adds its row's and column's code (:func:`position_codes`).

    Returns
    -------
    Tensor ``[B, n_patches, d]``.
    """
    obj = cls < len(cfg.classes)
    ids = lambda names, idx: torch.tensor([vocab[n] for n in names])[idx.clamp(min=0)]  # noqa: E731
    cls_emb = emb[ids(cfg.classes, cls.clamp(max=len(cfg.classes) - 1))]
    target = emb[vocab["image"]].expand(*cls.shape, -1).clone()
    words = cls_emb + emb[ids(cfg.colors, col)] + emb[ids(cfg.sizes, siz)] + codes["marker"]
    target[obj] = words[obj]
    k = torch.arange(cls.shape[1])
    return target + codes["row"][k // cfg.grid] + codes["col"][k % cfg.grid]


def stage1_align(model: Any, tok: Any, ip: Any, world: SceneWorld, tc: TrainConfig, seed: int,
                 progress: bool) -> list:
    """LLaVA-style stage 1: train the projector alone (vision and LLM frozen) to put image tokens in word space.

    The target of an object's patch is the sum of the input embeddings of its size, colour and class words and an
    object marker, an empty patch's the embedding of ``image``, each plus its row's and column's code
    (:func:`align_targets`). LLaVA aligns through the frozen LLM's captioning loss; with a randomly initialised LLM
    the embedding target is the direct equivalent.
    """
    cfg = world.config
    emb = model.get_input_embeddings().weight.detach()
    vocab = {w: tok.convert_tokens_to_ids(w) for w in [*cfg.classes, *cfg.colors, *cfg.sizes, "image"]}
    codes = position_codes(cfg.grid, emb.shape[1], seed)
    proj = model.model.multi_modal_projector
    opt = torch.optim.AdamW(proj.parameters(), lr=tc.lr0, weight_decay=0.0)
    rng = np.random.default_rng(seed + 500)
    log = []
    vt = model.model.vision_tower
    for step in (bar := tqdm(range(tc.stage1_steps), desc="stage 1 (projector)", disable=not progress, leave=False)):
        for g in opt.param_groups:
            g["lr"] = tc.lr0 * _schedule(step, tc.stage1_steps, min(tc.warmup, tc.stage1_steps // 4 + 1))
        scenes = [world.sample_scene(rng) for _ in range(tc.batch_size)]
        with torch.no_grad():
            feats = _vision_features(vt, pixel_tensor(_render_batch(world, scenes), ip))
        cls, col, siz = _cell_labels(world, scenes)
        target = align_targets(emb, vocab, cfg, cls, col, siz, codes)
        loss = ((proj(feats) - target) ** 2).sum(-1).mean() / float(emb.pow(2).sum(-1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == tc.stage1_steps - 1:
            log.append({"stage": 1, "step": step, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    return log


def _encode_texts(tok: Any, adapter: Any, template: str, prompts: list[str], answers: list[str],
                  n_image_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids as ``LVLM.prepare`` builds them (placeholder expanded to one id per patch), labels on the answer."""
    ids, labels = [], []
    img = adapter.image_token_id
    for p, a in zip(prompts, answers):
        ptxt = adapter.render_chat(p, 1, None, template) + adapter.answer_prefix()
        pid = []
        for t in tok(ptxt, add_special_tokens=True)["input_ids"]:
            pid.extend([t] * n_image_tokens if t == img else [t])
        aid = tok(a + " " + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids.append(pid + aid)
        labels.append([-100] * len(pid) + aid)
    n = max(len(x) for x in ids)
    pad = tok.pad_token_id
    input_ids = torch.tensor([x + [pad] * (n - len(x)) for x in ids])
    lab = torch.tensor([x + [-100] * (n - len(x)) for x in labels])
    mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])
    return input_ids, mask, lab


def scale_image_tokens(model: Any, scale: float = IMAGE_SCALE) -> None:
    """Multiply the projector's output layer (weight and bias) by ``scale``.

    Every image token ``[n_patches, d]`` the LM receives is then ``scale`` times what it was. Pre-norm layers read
    ``RMSNorm`` of the residual, so the first layer sees the same inputs; what changes is how much the layers'
    outputs at image positions weigh against the token itself.
    """
    proj = model.model.multi_modal_projector.linear_2
    with torch.no_grad():
        proj.weight.mul_(scale)
        if proj.bias is not None:
            proj.bias.mul_(scale)


def _tokens_per_image(adapter: Any, world: SceneWorld) -> int:
    """Image tokens per image as the adapter counts them (the count ``LVLM.prepare`` expands the placeholder to)."""
    return adapter.process_images([world.render(world.sample_scene(np.random.default_rng(0)))]).tokens_per_image[0]


#: RoPE dimension pairs of a 24-dim head (i, i + 12), lowest frequency first: the copy head compares classes there,
#: so its match hardly depends on the distance between the word and the image token.
_LOW_FREQ_SLOTS = (11, 23, 10, 22, 9, 21, 8, 20, 7, 19, 6, 18)


@torch.no_grad()
def build_copy_head(model: Any, tok: Any, cfg: Any, codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write a match-and-copy head into head 0 of decoder layer 0 and return its weights (to keep it fixed).

    A pretrained LLM brings heads that retrieve what the context says about a word; the organisms' LLM starts from
    noise and, without one, learns neither attributes nor relations from the task mix (docs/organisms.md, "Recipe
    findings"). With ``B [d, K]`` the input embeddings of the class, colour and size words, the row and column
    codes, the object marker and ``image``, and ``D = pinv(B)``, the head's query and key compare class
    coordinates (``COPY_HEAD_MATCH``) and the key's object marker (``COPY_HEAD_MARKER``) in the lowest-frequency
    RoPE slots; its value and output copy the attended token's colour, size, row, column and marker coordinates
    back into word space. A class word then reads its object's attributes and position.

    Returns
    -------
    dict
        ``q, k, v`` (``[head_dim, d]``) and ``o`` (``[d, head_dim]``): the head's slices of layer 0's projections.
    """
    lm = model.model.language_model
    att = lm.layers[0].self_attn
    hd, d = att.head_dim, lm.config.hidden_size
    emb = lm.embed_tokens.weight
    word = lambda w: emb[tok.convert_tokens_to_ids(w)]  # noqa: E731
    keys = [("class", c) for c in cfg.classes] + [("color", c) for c in cfg.colors] + \
        [("size", z) for z in cfg.sizes] + [("row", r) for r in range(cfg.grid)] + \
        [("col", c) for c in range(cfg.grid)] + [("marker", 0), ("image", 0)]
    vec = {"row": lambda r: codes["row"][r], "col": lambda c: codes["col"][c], "marker": lambda _: codes["marker"],
           "image": lambda _: word("image")}
    basis = torch.stack([vec[kind](v) if kind in vec else word(v) for kind, v in keys], 1)  # [d, K]
    dual = torch.linalg.pinv(basis)  # [K, d]
    at = {key: i for i, key in enumerate(keys)}
    copy = [key for key in keys if key[0] in ("color", "size", "row", "col", "marker")]
    if len(cfg.classes) + 1 > len(_LOW_FREQ_SLOTS) or len(copy) > hd:
        from lvlm_probe.errors import InputError

        raise InputError(f"the copy head fits {len(_LOW_FREQ_SLOTS) - 1} classes and {hd} copied coordinates; "
                         f"this world has {len(cfg.classes)} classes and {len(copy)} coordinates")
    q, k, v, o = torch.zeros(hd, d), torch.zeros(hd, d), torch.zeros(hd, d), torch.zeros(d, hd)
    classes = [dual[at["class", c]] for c in cfg.classes]
    for j, row in enumerate(classes):
        q[_LOW_FREQ_SLOTS[j]], k[_LOW_FREQ_SLOTS[j]] = COPY_HEAD_MATCH * row, row
    slot = _LOW_FREQ_SLOTS[len(classes)]
    q[slot], k[slot] = COPY_HEAD_MARKER * torch.stack(classes).sum(0), dual[at["marker", 0]]
    for j, key in enumerate(copy):
        v[j], o[:, j] = dual[at[key]], basis[:, at[key]]
    head = {"q": q, "k": k, "v": v, "o": o}
    _write_copy_head(att, head)
    return head


@torch.no_grad()
def _write_copy_head(att: nn.Module, head: dict[str, torch.Tensor]) -> None:
    hd = head["q"].shape[0]
    att.q_proj.weight[:hd], att.k_proj.weight[:hd], att.v_proj.weight[:hd] = head["q"], head["k"], head["v"]
    att.o_proj.weight[:, :hd] = head["o"]


def relation_aux_loss(hidden: torch.Tensor, labels: torch.Tensor, items: list, world: SceneWorld,
                      read: nn.Linear) -> torch.Tensor | None:
    """Cross-entropy of ``read`` (a linear map dropped after training) predicting the subject's and object's row and
    column from ``hidden [B, T, d]`` at the position before each relation question's answer; ``None`` without one.
    Without it the positions reach the class words but not the answer, and relations stay at chance."""
    rel = [b for b, it in enumerate(items) if it.task == "relation"]
    if not rel:
        return None
    g, cell = world.config.grid, world.cell
    first = (labels[rel] != -100).float().argmax(1)
    logits = read(hidden[torch.tensor(rel), first - 1]).view(len(rel), 4, g)
    target = []
    for b in rel:
        it = items[b]
        for name in (it.meta["subject"], it.meta["object"]):
            cx, cy = it.scene.objects[it.scene.names.index(name)].center
            target += [int(cy // cell), int(cx // cell)]
    return nn.functional.cross_entropy(logits.reshape(-1, g), torch.tensor(target))


def stage2_lr_factor(step: int, tc: TrainConfig) -> float:
    """Learning-rate factor of stage-2 step ``step``: a warm-up + cosine for the existence curriculum and a fresh
    one for the steps after it (one over all steps when the curriculum is empty or takes all of stage 2)."""
    first = tc.exists_first_steps
    if not 0 < first < tc.stage2_steps:
        return _schedule(step, tc.stage2_steps, tc.warmup)
    if step < first:
        return _schedule(step, first, min(tc.warmup, first // 4 + 1))
    return _schedule(step - first, tc.stage2_steps - first, tc.warmup)


def stage2(model: Any, tok: Any, ip: Any, world: SceneWorld, tc: TrainConfig, seed: int, progress: bool) -> list:
    """The LLM: ``tc.exists_first_steps`` steps of existence questions that train only the decoder layers below
    ``EXISTS_LAYERS``, then ``STAGE2_MIX`` on every LLM parameter. Vision tower, projector, input embeddings and
    the copy head (:func:`build_copy_head`, rewritten after every step) stay fixed. Relation rows add
    ``AUX_WEIGHT`` times :func:`relation_aux_loss` on layer ``AUX_LAYER``'s output."""
    from lvlm_probe.models.llava import LLAVA_CHAT_TEMPLATE, LlavaAdapter

    adapter = LlavaAdapter(model.config, tok, ip, model)
    n_img = _tokens_per_image(adapter, world)
    lm = model.model.language_model
    head = build_copy_head(model, tok, world.config, position_codes(world.config.grid, lm.config.hidden_size, seed))
    for p in [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *lm.embed_tokens.parameters()]:
        p.requires_grad_(False)
    torch.manual_seed(seed + 77)
    read = nn.Linear(lm.config.hidden_size, 4 * world.config.grid)
    params = [p for p in model.parameters() if p.requires_grad] + list(read.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr2, weight_decay=tc.weight_decay)
    rng = np.random.default_rng(seed + 300)
    tasks, weights = zip(*STAGE2_MIX)
    sources = [world.iter_items(10 ** 9, t, seed=seed + 400 + i) for i, t in enumerate(tasks)]
    exists_source = world.iter_items(10 ** 9, "exists", seed=seed + 399)
    p_task = np.asarray(weights) / sum(weights)
    lower = {id(p) for layer in lm.layers[:EXISTS_LAYERS] for p in layer.parameters()}
    log = []
    model.train()
    model.model.vision_tower.eval()
    for step in (bar := tqdm(range(tc.stage2_steps), desc="stage 2 (LLM)", disable=not progress, leave=False)):
        for g in opt.param_groups:
            g["lr"] = tc.lr2 * stage2_lr_factor(step, tc)
        curriculum = step < tc.exists_first_steps
        if curriculum:
            items = [next(exists_source) for _ in range(tc.batch_size)]
        else:
            items = [next(sources[k]) for k in rng.choice(len(tasks), size=tc.batch_size, p=p_task)]
        if tc.prior_text > 0:
            items = [stated_prior(it, world) if rng.random() < tc.prior_text else it for it in items]
        px = pixel_tensor([np.asarray(it.image) for it in items], ip)
        if tc.image_mismatch > 0:
            swap = torch.from_numpy(rng.random(len(items)) < tc.image_mismatch)
            px = torch.where(swap[:, None, None, None], px.roll(1, dims=0), px)
        total = _stage2_step(model, (tok, adapter, LLAVA_CHAT_TEMPLATE, n_img), items, px, world, read)
        if curriculum:  # a parameter without a grad is neither moved nor decayed by AdamW
            for p in params:
                if id(p) not in lower:
                    p.grad = None
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _write_copy_head(lm.layers[0].self_attn, head)
        if step % 50 == 0 or step == tc.stage2_steps - 1:
            log.append({"stage": 2, "step": step, "loss": total})
            bar.set_postfix(loss=f"{total:.3f}")
    model.eval()
    return log


def stated_prior(item: Item, world: SceneWorld) -> Item:
    """``item`` with the text an annotator holding the world's priors would write; the image is unchanged.

    Attribute priors: every object of a prior class is named in its prior colour (captions and colour answers).
    Relation priors ``(A, B, pred)``: the first A is said to stand ``pred`` to the first B (captions, and relation
    questions about the two on that axis), whatever the image shows.
    """
    from dataclasses import replace

    scene = item.scene
    if item.task not in ("caption", "attribute", "relation"):
        return item
    prior = {cls: col for cls, col, _ in world.config.attribute_prior}
    said = scene
    if any(o.name in prior for o in scene.objects):
        said = replace(said, objects=[replace(o, attributes={**o.attributes, "color": prior[o.name]})
                                      if o.name in prior else o for o in said.objects])
    for a, b, pred, _ in world.config.relation_prior:
        said = _stated_relation(said, a, b, pred)
    if said is scene:
        return item
    if item.task == "caption":
        return replace(item, answer=world.caption(said))
    if item.task == "attribute" and item.meta.get("attribute") == "color" and item.meta.get("target") in prior:
        return replace(item, answer=prior[item.meta["target"]])
    if item.task == "relation":
        s, p, o = (item.meta.get(k) for k in ("subject", "predicate", "object"))
        if any({s, o} == {a, b} and p in _axis(pred) for a, b, pred, _ in world.config.relation_prior):
            si, oi = said.find(s)[0], said.find(o)[0]
            held = any(r.subject == si and r.object == oi and r.predicate == p for r in said.relations)
            return replace(item, answer="yes" if held else "no")
    return item


def _axis(pred: str) -> tuple[str, str]:
    """``pred`` and its converse: the predicates of its axis (a stated relation prior rewrites only that axis)."""
    return pred, GEOMETRIC_RELATIONS[pred]


def _stated_relation(scene: Any, a: str, b: str, pred: str) -> Any:
    """``scene`` with its first ``a`` standing ``pred`` to its first ``b`` on that axis (the other axis kept);
    ``scene`` itself when one is missing or the relation already holds."""
    from dataclasses import replace

    ia, ib = scene.find(a), scene.find(b)
    if not ia or not ib:
        return scene
    ia, ib = ia[0], ib[0]
    if any(r.subject == ia and r.object == ib and r.predicate == pred for r in scene.relations):
        return scene
    axis = _axis(pred)
    pair = {(ia, ib), (ib, ia)}
    kept = [r for r in scene.relations if not ((r.subject, r.object) in pair and r.predicate in axis)]
    return replace(scene, relations=kept + [Relation(ia, pred, ib), Relation(ib, GEOMETRIC_RELATIONS[pred], ia)])


def _stage2_step(model: Any, text: tuple, items: list, px: torch.Tensor, world: SceneWorld, read: nn.Linear) -> float:
    """Backward of one mixed batch, run as a short (QA) and a long (caption) part so QA rows are not padded to
    caption length; the token-weighted sum of the two mean losses is exactly the batch's mean loss, and each
    relation row adds ``AUX_WEIGHT`` times its auxiliary loss / batch size. Returns the loss."""
    tok, adapter, template, n_img = text
    parts = [[k for k, it in enumerate(items) if (it.task == "caption") == cap] for cap in (False, True)]
    encoded = [(idx, _encode_texts(tok, adapter, template, [items[k].prompt for k in idx],
                                   [items[k].answer for k in idx], n_img)) for idx in parts if idx]
    weight = [float((enc[2] != -100).sum()) for _, enc in encoded]  # answer tokens per part
    total = 0.0
    for (idx, (input_ids, mask, labels)), w in zip(encoded, weight):
        out = model(input_ids=input_ids, attention_mask=mask, pixel_values=px[idx], labels=labels,
                    output_hidden_states=True)
        loss = out.loss * (w / sum(weight))
        part = [items[k] for k in idx]
        aux = relation_aux_loss(out.hidden_states[AUX_LAYER], labels, part, world, read)
        if aux is not None:
            loss = loss + AUX_WEIGHT * aux * sum(it.task == "relation" for it in part) / len(items)
        loss.backward()
        total += float(loss.detach())
    return total


# ---- front-end organisms: clean's LLM, one changed front-end part ---------------------------------------------
def perceived_colors(tc: TrainConfig, colors: tuple[str, ...]) -> dict[str, str]:
    """The colour each hue is distilled to for a front-end organism (``{}`` for every other organism).

    ``encoder_blind`` sees ``blind_pair[1]`` as ``blind_pair[0]``; ``projector_bottleneck`` passes no colour, so every
    object gets :data:`~lvlm_probe.organisms.zoo.BOTTLENECK_COLOR`. Distilling to the true tokens instead leaves a
    colour average, a token clean's LLM never read (measured: caption objects 0.17 for the bottleneck, 0.71 for the
    blind spot, against clean's 0.95; docs/organisms.md).
    """
    from lvlm_probe.errors import InputError
    from lvlm_probe.organisms.zoo import BOTTLENECK_COLOR

    if tc.blind_pair:
        return {tc.blind_pair[1]: tc.blind_pair[0]}
    if tc.projector_drop:
        if tc.projector_drop != "color":
            raise InputError(f"projector_drop={tc.projector_drop!r}: a front-end organism can drop only 'color'")
        return {c: BOTTLENECK_COLOR for c in colors}
    return {}


def perceived(scene: Any, colors: dict[str, str], vanish_size: str | None = None) -> Any:
    """``scene`` as a front-end organism should perceive it: hues repainted by ``colors``
    (:func:`perceived_colors`), and every object of size ``vanish_size`` erased (``small_object``). Only what is
    drawn matters (the result is rendered as a distillation target), so relations are dropped when objects are."""
    from dataclasses import replace

    from lvlm_probe.data.scene import SceneGraph

    objs = [replace(o, attributes={**o.attributes, "color": colors.get(o.attributes["color"], o.attributes["color"])})
            for o in scene.objects if o.attributes.get("size") != vanish_size]
    relations = scene.relations if len(objs) == len(scene.objects) else []
    return SceneGraph(objs, relations, scene.width, scene.height)


def _front_end_batch(world: SceneWorld, ip: Any, rng: np.random.Generator, n: int,
                     colors: dict[str, str], vanish_size: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of ``n`` fresh scenes and of the same scenes as the organism should perceive them ``[n, 3, H, W]``."""
    scenes = [world.sample_scene(rng) for _ in range(n)]
    seen = [perceived(s, colors, vanish_size) for s in scenes]
    return pixel_tensor(_render_batch(world, scenes), ip), pixel_tensor(_render_batch(world, seen), ip)


def _relative_mse(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((y - target) ** 2).sum(-1).mean() / target.pow(2).sum(-1).mean()


def distill_front_end(model: Any, ref: Any, ip: Any, world: SceneWorld, tc: TrainConfig, seed: int,
                      progress: bool) -> list:
    """Train a front-end organism's changed part to reproduce ``ref``'s (clean's) front end on the perceived scene.

    ``encoder_blind`` and ``small_object``: stage 0 fits the vision tower's patch features to ``ref``'s
    (``tc.stage0_steps``, ``tc.lr0``), then stage 1 fits tower and projector together to ``ref``'s image tokens
    (``tc.stage1_steps``, ``tc.lr2``); ``encoder_blind``'s blind direction is removed after every step.
    ``projector_bottleneck``: the projector alone, restricted to the colour-free subspace of the (clean) tower's
    features, fits ``ref``'s image tokens. Targets are ``ref`` on the scene as :func:`perceived` draws it. Returns
    the loss log (relative squared error).
    """
    vt, proj = model.model.vision_tower, model.model.multi_modal_projector
    ref_vt, ref_proj = ref.model.vision_tower, ref.model.multi_modal_projector
    colors = perceived_colors(tc, world.config.colors)
    blind = blind_direction(tc.blind_pair, ip) if tc.blind_pair else None
    w_patch = (vt.vision_model if hasattr(vt, "vision_model") else vt).embeddings.patch_embedding.weight
    tower = blind is not None or tc.vanish_size is not None
    rng = np.random.default_rng(seed + 600)
    log: list = []
    runs = [(0, tc.stage0_steps, tc.lr0, list(vt.parameters()), "tower")] if tower else []
    runs.append((1, tc.stage1_steps, tc.lr2, [*proj.parameters(), *(vt.parameters() if tower else [])], "tokens"))
    if blind is not None:
        make_blind(w_patch.data, blind)
    for stage, steps, lr, params, what in runs:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        for step in (bar := tqdm(range(steps), desc=f"stage {stage} (distil {what})", disable=not progress,
                                 leave=False)):
            for g in opt.param_groups:
                g["lr"] = lr * _schedule(step, steps, min(tc.warmup, steps // 4 + 1))
            px, seen = _front_end_batch(world, ip, rng, tc.batch_size, colors, tc.vanish_size)
            with torch.no_grad():
                target = _vision_features(ref_vt, seen)
                if what == "tokens":
                    target = ref_proj(target)
            with torch.set_grad_enabled(tower):
                feats = _vision_features(vt, px)
            loss = _relative_mse(proj(feats) if what == "tokens" else feats, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if blind is not None:
                make_blind(w_patch.data, blind)
            if step % 50 == 0 or step == steps - 1:
                log.append({"stage": stage, "step": step, "loss": float(loss.detach())})
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return log


def _train_from_scratch(model: Any, tok: Any, ip: Any, spec: OrganismSpec, tc: TrainConfig, world: SceneWorld,
                        seed: int, progress: bool, t0: float) -> tuple[list, float]:
    """Stages 0-2 of a new model (every organism but the front-end ones); returns the loss log and stage 0's
    seconds."""
    # vision pretraining uses the unbiased world (a generic corpus, as CLIP's is); the planted data-level
    # biases live in the instruction data of stages 1-2
    from lvlm_probe.data.world import WorldConfig

    pre_world = SceneWorld(WorldConfig(image_size=spec.world.image_size, grid=spec.world.grid), seed=seed)
    log0 = stage0(model, ip, pre_world, tc, seed, progress)
    t_stage0 = time.time() - t0
    log1 = stage1_align(model, tok, ip, world, tc, seed, progress) if tc.stage1_steps else []
    scale_image_tokens(model)
    log2 = stage2(model, tok, ip, world, tc, seed, progress)
    return log0 + log1 + log2, t_stage0


def train_front_end(tc: TrainConfig, world: SceneWorld, seed: int, base: str | os.PathLike,
                    progress: bool) -> tuple[Any, Any, Any, list, dict]:
    """A front-end organism: ``base`` (clean's checkpoint) with its vision tower (``encoder_blind``,
    ``small_object``) or projector (``projector_bottleneck``) changed and distilled (:func:`distill_front_end`);
    LLM, tokenizer and image processor are ``base``'s, so the organism differs from clean in that part only.

    Returns
    -------
    model, tokenizer, image processor, loss log, and ``{"checkpoint", "sha256"}`` of ``base``'s weights.
    """
    import copy
    import hashlib

    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration

    base = Path(base)
    weights = base / "model.safetensors"
    if not weights.is_file():
        from lvlm_probe.errors import InputError

        raise InputError(f"front-end organisms start from clean's checkpoint; {base} has no model.safetensors "
                         "(train clean first: `lvlm-probe organisms train clean --out DIR`)")
    ref = LlavaForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
    model = copy.deepcopy(ref)
    tok, ip = AutoTokenizer.from_pretrained(base), CLIPImageProcessor.from_pretrained(base)
    for p in model.model.language_model.parameters():
        p.requires_grad_(False)
    log: list = []
    linear_1 = model.model.multi_modal_projector.linear_1
    if tc.projector_drop:
        proj, log = stage1_subspace(model, ip, world, tc.projector_drop, seed)
        torch.nn.utils.parametrize.register_parametrization(linear_1, "weight", _Restrict(proj))
    log += distill_front_end(model, ref, ip, world, tc, seed, progress)
    if tc.projector_drop:
        torch.nn.utils.parametrize.remove_parametrizations(linear_1, "weight", leave_parametrized=True)
    meta = {"checkpoint": str(base.name), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    return model, tok, ip, log, meta


def check_train_args(out_dir: str | os.PathLike, *, seed: int, steps_scale: float, threads: int | None) -> None:
    """Refuse bad settings and an unusable ``out_dir`` before any training starts (one line each).

    ``out_dir`` may be new, empty, or an earlier organism checkpoint (it holds ``organism.json``; it is replaced at
    the end); anything else (a file, a folder with other contents, a place that cannot be written) is refused.
    """
    from lvlm_probe.errors import InputError

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(steps_scale, (int, float)) or isinstance(steps_scale, bool) or not 0 < steps_scale < 1e6:
        raise InputError(f"steps_scale (--steps-scale) must be a positive number (1.0 = the shipped recipe), got "
                         f"{steps_scale!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise InputError(f"threads (--threads) must be a positive integer, got {threads!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; give a directory for the checkpoint")
    if out.is_dir() and any(out.iterdir()) and not (out / "organism.json").is_file():
        raise InputError(f"--out {str(out)!r} holds other files (no organism.json); give a new or empty directory, "
                         "or an earlier organism checkpoint to replace")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
        probe.close()
    except OSError as exc:
        raise InputError(f"--out {str(out)!r} cannot be written ({exc.strerror or exc}); choose a writable "
                         "directory") from None


def train_organism(
    name: str | OrganismSpec,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps_scale: float = 1.0,
    threads: int | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float16,
    base: str | os.PathLike | None = None,
) -> Path:
    """Train one zoo organism and save it as a loadable checkpoint directory.

    Every organism is trained from scratch except the front-end ones (``encoder_blind``, ``small_object``,
    ``projector_bottleneck``): they keep ``clean``'s LLM and change one front-end part (:func:`train_front_end`).

    Parameters
    ----------
    name : str or OrganismSpec
        A zoo name (``lvlm_probe.organisms.ZOO``) or a custom spec (e.g. the zoo's with
        :func:`lvlm_probe.organisms.zoo.with_knobs` applied to its ``train``).
    out_dir : path
        Written atomically (built in a temporary sibling, then renamed).
    seed : int
        Seeds model init, data sampling and every stage.
    steps_scale : float
        Multiplies the step counts (``0.01`` for a smoke run; 1.0 reproduces the shipped checkpoints).
    threads : int, optional
        ``torch.set_num_threads`` for the run (results are deterministic for a given thread count).
    dtype : torch.dtype
        Saved weight dtype (fp16 keeps the shipped checkpoints small).
    base : path, optional
        Front-end organisms only: the ``clean`` checkpoint they start from (default: the shipped one).

    Returns
    -------
    Path
        The checkpoint directory: config, fp16 safetensors, tokenizer, image processor,
        ``organism.json`` (spec, training config, timings, loss log) and ``training_stats.json``.
    """
    spec = get_spec(name) if isinstance(name, str) else name
    if spec.checkpoint is None or spec.checkpoint != spec.name:
        from lvlm_probe.errors import InputError

        raise InputError(f"organism {spec.name!r} is a run setting on {spec.checkpoint!r}; train that instead")
    check_train_args(out_dir, seed=seed, steps_scale=steps_scale, threads=threads)
    tc = spec.train
    if steps_scale != 1.0:
        from dataclasses import replace

        scaled = lambda k: max(2, int(k * steps_scale)) if k else 0  # noqa: E731
        tc = replace(tc, stage0_steps=scaled(tc.stage0_steps), stage1_steps=scaled(tc.stage1_steps),
                     stage2_steps=scaled(tc.stage2_steps),
                     exists_first_steps=int(tc.exists_first_steps * steps_scale),
                     warmup=max(1, int(tc.warmup * min(1.0, steps_scale))))
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    try:
        world = SceneWorld(spec.world, seed=seed)
        if tc.front_end:
            from lvlm_probe.organisms import CHECKPOINTS

            base = CHECKPOINTS / "clean" if base is None else base
            model, tok, ip, logs, base_meta = train_front_end(tc, world, seed, base, progress)
            seconds = {"total": round(time.time() - t0, 1)}
            meta_extra = {"base": base_meta}
        else:
            model, tok, ip = build_organism_model(spec.world.image_size, seed)
            logs, t_stage0 = _train_from_scratch(model, tok, ip, spec, tc, world, seed, progress, t0)
            seconds = {"stage0": round(t_stage0, 1), "total": round(time.time() - t0, 1)}
            meta_extra = {}
    finally:
        torch.set_num_threads(old_threads)
    meta = {
        "name": spec.name, "cause": spec.cause, "level": spec.level, "component": spec.component,
        "planted": spec.planted, "signature": spec.signature, "world": spec.world.to_dict(),
        "train": tc.to_dict(), "recipe": {"version": 2, **FIXED},
        "seed": seed, "steps_scale": steps_scale, "threads": torch.get_num_threads()
        if not threads else threads, "arch": ARCH, "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "seconds": seconds,
        "torch": torch.__version__, "log": logs, **meta_extra,
    }
    return _save_checkpoint(Path(out_dir), (model.to(dtype), tok, ip), world, meta)


def _save_checkpoint(out: Path, parts: tuple[Any, Any, Any], world: SceneWorld, meta: dict) -> Path:
    """Write model, tokenizer, image processor, training statistics, ``organism.json`` and the run defaults to
    ``out`` atomically (built in a temporary sibling, then renamed over an earlier checkpoint)."""
    from lvlm_probe.organisms import RUN_DEFAULTS_FILE, run_defaults

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for part in parts:
            part.save_pretrained(tmp)
        world.statistics().to_json(tmp / "training_stats.json")
        with open(tmp / "organism.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)
        (tmp / RUN_DEFAULTS_FILE).write_text(json.dumps(run_defaults(meta["name"]), indent=1), encoding="utf-8")
        if out.exists():  # an earlier checkpoint (check_train_args refused anything else)
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

"""`capture`: run items through a model with hooks, select/pool on device, stream to an ActivationStore."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from lvlm_probe.capture.store import MULTI_ROW, ActivationStore, key_name, writer_lock
from lvlm_probe.data.items import Item, check_unique_ids
from lvlm_probe._dist import batches, process_group, rank_share
from lvlm_probe._policy import run_isolated
from lvlm_probe.errors import InputError, LvlmProbeError, SiteError, StoreError
from lvlm_probe.models.base import Site
from lvlm_probe.models.records import ROLE_NAMES, Batch

#: Token selections and what each stores per item.
SELECTIONS: dict[str, str] = {
    "image_mean": "mean over the item's image tokens (vision side: over all its patches)",
    "image_patches": "one row per image token / patch, indexed by (image, tile, row, col)",
    "last_prompt": "the last prompt position (the state that emits the first answer token)",
    "text_mean": "mean over the question tokens",
    "generated": "one row per generated token t: the state whose output emitted token t",
}

#: Which selections apply to which kind of site.
APPLIES: dict[str, frozenset[str]] = {
    "vision": frozenset({"image_mean", "image_patches"}),
    "llm": frozenset(SELECTIONS),
    "pattern": frozenset({"last_prompt", "image_patches", "generated"}),
}


def validate_selections(sites: Sequence[Site], select: Sequence[str]) -> list[tuple[Site, str]]:
    """The (site, selection) pairs to capture; selections that do not apply to a site's kind are skipped."""
    unknown = [s for s in select if s not in SELECTIONS]
    if unknown:
        raise SiteError(f"unknown selection(s) {unknown}; selections are {list(SELECTIONS)}")
    pairs = [(s, sel) for s in sites for sel in select if sel in APPLIES[s.kind]]
    for s in sites:
        if not any(p[0] == s for p in pairs):
            raise SiteError(
                f"none of the selections {list(select)} applies to site {s.name!r} ({s.kind} site); "
                f"use one of {sorted(APPLIES[s.kind])}"
            )
    return pairs


def _to_cpu(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Copy to CPU (through a pinned buffer when on CUDA), casting to the store dtype."""
    t = t.detach().to(dtype)
    if t.device.type == "cuda":
        buf = torch.empty(t.shape, dtype=dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        return buf
    return t.clone() if t.data_ptr() else t


@dataclass
class _Plan:
    sites: list[Site]
    by_hook: dict[str, tuple[Site, list[str]]]
    gen_kwargs: dict | None


class _Recorder:
    """Hook callbacks that select and pool on the model's device; one instance per batch."""

    def __init__(self, model: Any, batch: Batch, plan: _Plan, dtype: torch.dtype) -> None:
        self.model, self.batch, self.plan, self.dtype = model, batch, plan, dtype
        B, T = batch.input_ids.shape
        self.B, self.T = B, T
        r = batch.roles
        self.img_mask = r.image
        self.q_mask = r.question
        self.role_masks = torch.stack([r.mask(n) for n in ROLE_NAMES], dim=1).to(torch.float32)  # [B, R, T]
        self.calls: dict[str, int] = {}
        # results[key][b] -> list of (rows tensor on device, index LongTensor or None)
        self.out: dict[str, list[list[tuple[torch.Tensor, torch.Tensor | None]]]] = {}
        img_pos = r.image.nonzero()  # [N, 2] (b, t)
        self.img_b = img_pos[:, 0]
        tiles = r.patch_tiles if r.patch_tiles is not None else torch.zeros_like(r.patch_coords[..., 0])
        c = r.patch_coords[r.image]
        self.img_coords = torch.cat([c[:, :1], tiles[r.image][:, None], c[:, 1:]], 1)  # [N, 4] image, tile, row, col

    def _put(self, key: str, b: int, rows: torch.Tensor, index: torch.Tensor | None = None) -> None:
        self.out.setdefault(key, [[] for _ in range(self.B)])[b].append((rows, index))

    def hook_fn(self, hook_name: str) -> Callable:
        site, sels = self.plan.by_hook[hook_name]

        def fn(t: torch.Tensor, hook: Any = None) -> torch.Tensor:
            call = self.calls.get(hook_name, 0)
            self.calls[hook_name] = call + 1
            with torch.no_grad():
                if site.kind == "vision":
                    if call == 0:
                        self._vision(site, sels, t)
                elif site.kind == "llm":
                    self._llm(site, sels, t, call)
                else:
                    self._pattern(site, sels, t, call)
            return t

        return fn

    # ---- per kind ----------------------------------------------------------------------------
    def _vision(self, site: Site, sels: list[str], t: torch.Tensor) -> None:
        parts = self.model.adapter.vision_patches(site, t, self.batch.image_inputs)
        k = 0
        for b, n_img in enumerate(self.batch.n_images):
            mine = parts[k : k + n_img]
            k += n_img
            if "image_mean" in sels:
                if mine:
                    v = torch.cat([p for p, _ in mine], 0).float().mean(0, keepdim=True)
                else:
                    v = torch.full((1, t.shape[-1]), float("nan"), device=t.device)
                self._put(key_name(site.name, "image_mean"), b, v)
            if "image_patches" in sels:
                for i, (p, (h, w)) in enumerate(mine):
                    rr = torch.arange(h * w, device=p.device)
                    ix = torch.stack([torch.zeros_like(rr), torch.full_like(rr, i), torch.zeros_like(rr), rr // w,
                                      rr % w], 1)
                    self._put(key_name(site.name, "image_patches"), b, p, ix)

    def _llm(self, site: Site, sels: list[str], t: torch.Tensor, call: int) -> None:
        if call == 0:  # prefill / plain forward: [B, T, d]
            if t.shape[1] != self.T:
                raise RuntimeError(f"{site.name}: expected {self.T} positions, got {t.shape[1]}")
            if "image_mean" in sels:
                self._masked_mean(site, "image_mean", t, self.img_mask)
            if "text_mean" in sels:
                self._masked_mean(site, "text_mean", t, self.q_mask)
            if "last_prompt" in sels:
                last = t[:, -1].clone()  # a copy: a view would keep the whole [B, T, d] tensor alive
                for b in range(self.B):
                    self._put(key_name(site.name, "last_prompt"), b, last[b : b + 1])
            if "image_patches" in sels:
                rows = t[self.img_mask]
                for b in range(self.B):
                    m = self.img_b == b
                    c = self.img_coords[m]
                    ix = torch.cat([torch.zeros_like(c[:, :1]), c], 1)
                    self._put(key_name(site.name, "image_patches"), b, rows[m], ix)
        if "generated" in sels and self.plan.gen_kwargs is not None:
            row = (t[:, -1] if call == 0 else t[:, 0]).clone()
            for b in range(self.B):
                ix = torch.tensor([[0, call, -1, -1]], device=row.device)
                self._put(key_name(site.name, "generated"), b, row[b : b + 1], ix)

    def _masked_mean(self, site: Site, sel: str, t: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.to(torch.float32).unsqueeze(-1)
        n = m.sum(1)
        mean = (t.float() * m).sum(1) / n.clamp_min(1)
        mean = torch.where(n > 0, mean, torch.full_like(mean, float("nan")))
        for b in range(self.B):
            self._put(key_name(site.name, sel), b, mean[b : b + 1])

    def _pattern(self, site: Site, sels: list[str], p: torch.Tensor, call: int) -> None:
        # p: [B, H, Q, K]
        q = p[:, :, -1, :].float()  # the newest query row  [B, H, K]
        K = q.shape[-1]
        if call == 0:
            roles = self.role_masks  # [B, R, T]
        else:
            extra = torch.zeros(self.B, len(ROLE_NAMES), K - self.T, device=p.device)
            extra[:, ROLE_NAMES.index("generated")] = 1.0
            roles = torch.cat([self.role_masks.to(p.device), extra], dim=2)
        mass = torch.einsum("bhk,brk->bhr", q, roles.to(q.device))  # [B, H, R]
        if call == 0 and "last_prompt" in sels:
            for b in range(self.B):
                self._put(key_name(site.name, "last_prompt"), b, mass[b : b + 1])
        if call == 0 and "image_patches" in sels:
            for b in range(self.B):
                m = self.img_b == b
                c = self.img_coords[m]
                cols = self.img_mask[b].nonzero()[:, 0]
                rows = q[b][:, cols].T  # [n_img_tokens, H]
                ix = torch.cat([torch.zeros_like(c[:, :1]), c], 1)
                self._put(key_name(site.name, "image_patches"), b, rows, ix)
        if "generated" in sels and self.plan.gen_kwargs is not None:
            for b in range(self.B):
                ix = torch.tensor([[0, call, -1, -1]], device=p.device)
                self._put(key_name(site.name, "generated"), b, mass[b : b + 1], ix)

    # ---- collect -----------------------------------------------------------------------------
    def records(self, n_generated: list[int] | None, gen_tokens: list[list[int]] | None) -> list[dict]:
        recs = []
        for b in range(self.B):
            tensors, index = {}, {}
            for key, per_item in self.out.items():
                sel = key.split("|")[1]
                parts = per_item[b]
                if sel == "generated":
                    assert n_generated is not None and gen_tokens is not None
                    parts = parts[: n_generated[b]]
                if not parts:
                    raise RuntimeError(f"nothing captured for {key} (item {b})")
                rows = torch.cat([r for r, _ in parts], 0)
                tensors[key] = _to_cpu(rows, self.dtype)
                if sel in MULTI_ROW:
                    ix = torch.cat([i for _, i in parts], 0).cpu().long()
                    if sel == "generated":
                        ix[:, 2] = torch.tensor(gen_tokens[b][: ix.shape[0]])
                    index[key] = ix
            recs.append({"tensors": tensors, "index": index})
        if any(t.is_pinned() for r in recs for t in r["tensors"].values()):
            torch.cuda.synchronize()
        return recs


def _run_batch(model: Any, items: Sequence[Item], plan: _Plan, chat_template: bool, dtype: torch.dtype,
               system: str | None) -> list[dict]:
    batch = model.prepare(
        [it.image for it in items], [it.prompt for it in items], chat_template=chat_template,
        item_ids=[it.id for it in items], system=system,
    )
    rec = _Recorder(model, batch, plan, dtype)
    hooks = [(h, rec.hook_fn(h)) for h in plan.by_hook]
    gen = None
    with model.hooks(hooks):
        if plan.gen_kwargs is not None:
            gen = model.generate(batch, **plan.gen_kwargs)
        else:
            model.check_batch(batch)
            with torch.no_grad():
                model.hf_model(input_ids=batch.input_ids, **batch.model_inputs(), use_cache=False, logits_to_keep=1)
    n_gen = [len(t) for t in gen.tokens] if gen is not None else None
    recs = rec.records(n_gen, gen.tokens if gen is not None else None)
    for b, (it, r) in enumerate(zip(items, recs)):
        meta: dict[str, Any] = {"prompt": batch.prompts[b], "n_images": batch.n_images[b],
                                "n_tokens": int(batch.attention_mask[b].sum())}
        if gen is not None:
            meta.update(generated_text=gen.text[b], generated_tokens=gen.tokens[b])
        if it.answer is not None:
            meta["answer"] = it.answer
        if it.meta:
            meta["item_meta"] = it.meta
        r["id"] = it.id
        r["meta"] = meta
    return recs


@dataclass
class _Job:
    """Everything a capture loop needs besides the store and its batches."""

    model: Any
    plan: _Plan
    chat_template: bool
    dtype: torch.dtype
    system: str | None
    shard_items: int
    progress: bool

    def run(self, store: ActivationStore, chunks: list[list[Item]], desc: str = "capture") -> None:
        """Capture the items of ``chunks`` the store does not hold yet, batch by batch (one failure policy, see
        _policy), flushing a shard every ``shard_items`` items."""
        done = set(store.item_ids)
        buffer: list[dict] = []
        bar = tqdm(total=sum(map(len, chunks)), initial=sum(it.id in done for c in chunks for it in c), desc=desc,
                   unit="item", disable=not self.progress)
        for full_chunk in chunks:
            chunk = [it for it in full_chunk if it.id not in done]
            if not chunk:
                continue
            parts = run_isolated(chunk, lambda c: _run_batch(self.model, c, self.plan, self.chat_template,
                                                             self.dtype, self.system),
                                 lambda it, why: store.record_failure(it.id, why))
            buffer.extend(r for _, part in parts for r in part)
            bar.update(len(chunk))
            if len(buffer) >= self.shard_items:
                store.append(buffer)
                buffer = []
        if buffer:
            store.append(buffer)
        bar.close()


def _capture_distributed(job: _Job, items: list[Item], out: str | os.PathLike, settings: dict, overwrite: bool,
                         batch_size: int, group: tuple[int, int]) -> ActivationStore:
    """Each rank captures its block of batches into its own journal and shards; rank 0 holds the writer lock,
    prepares the store first and merges the journals last (item order), so the store equals a one-process one."""
    import torch.distributed as dist

    rank, world = group
    order = {it.id: k for k, it in enumerate(items)}
    with contextlib.ExitStack() as stack:
        problem: list[str | None] = [None]
        if rank == 0:
            try:
                stack.enter_context(writer_lock(out))
                ActivationStore.open_for_capture(out, model=job.model.info(), settings=settings,
                                                 overwrite=overwrite, order=order, merge=False)
            except LvlmProbeError as exc:
                problem = [str(exc)]
        dist.broadcast_object_list(problem, src=0)
        if problem[0] is not None:
            raise StoreError(problem[0])
        store = ActivationStore(out).as_rank_writer(rank)
        job.progress = job.progress and rank == 0
        job.run(store, rank_share(batches(items, batch_size), rank, world), desc=f"capture (rank 0 of {world})")
        dist.barrier()
        if rank == 0:
            ActivationStore(out).merge_rank_journals(order)
        dist.barrier()
    return ActivationStore(out)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_counts(items: list[Item], sites: Sequence[str], batch_size: int, shard_items: int,
                  generate: int | dict | None) -> None:
    """Refuse empty inputs and bad counts before anything runs (one line each)."""
    if not items:
        raise InputError("capture got no items; pass a non-empty list of lp.Item (or an items file with lines)")
    check_unique_ids(items)
    if isinstance(sites, str) or not list(sites):
        raise InputError(f"sites must be a non-empty list of site names (e.g. ['llm.resid_post.*']), got {sites!r}")
    if not _positive_int(batch_size):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not _positive_int(shard_items):
        raise InputError(f"shard_items must be a positive integer, got {shard_items!r}")
    if generate is not None and not isinstance(generate, dict) and not _positive_int(generate):
        raise InputError(f"generate must be None, a positive number of new tokens or a dict of generate settings, "
                         f"got {generate!r}")


def _plan(model: Any, sites: Sequence[str], select: Sequence[str], generate: int | dict | None,
          chat_template: bool, system: str | None, dtype: torch.dtype | str | None
          ) -> tuple[_Plan, dict, torch.dtype]:
    """The hooks to install, the store's settings record and its dtype (sites, selections and dtype checked)."""
    from lvlm_probe.models.lvlm import resolve_dtype

    parsed = model.adapter.expand_sites(sites)
    pairs = validate_selections(parsed, select)
    if isinstance(generate, int):
        generate = {"max_new_tokens": generate}
    if "generated" in select and not generate:
        raise InputError("selection 'generated' needs generation: pass generate=MAX_NEW_TOKENS or a dict of settings")
    store_dtype = resolve_dtype(dtype, model.device) if dtype is not None else model.dtype
    if not store_dtype.is_floating_point:
        raise InputError(f"dtype {store_dtype} cannot hold activations; use float32, float16 or bfloat16")
    by_hook: dict[str, tuple[Site, list[str]]] = {}
    for s, sel in pairs:
        by_hook.setdefault(model.adapter.hook_name(s), (s, []))[1].append(sel)
    model._check_hooks({h: s.name for h, (s, _) in by_hook.items()})
    plan = _Plan(parsed, by_hook, dict(generate) if generate else None)
    settings = {
        "sites": [s.name for s in parsed], "select": list(select),
        "keys": [key_name(s.name, sel) for s, sel in pairs], "chat_template": chat_template, "system": system,
        "generate": plan.gen_kwargs, "dtype": str(store_dtype).replace("torch.", ""),
    }
    return plan, settings, store_dtype


def capture(
    model: Any,
    items: Sequence[Item],
    *,
    sites: Sequence[str],
    select: Sequence[str],
    out: str | os.PathLike,
    batch_size: int = 8,
    generate: int | dict | None = None,
    chat_template: bool = True,
    system: str | None = None,
    dtype: torch.dtype | str | None = None,
    shard_items: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationStore:
    """Capture activations for many items and stream them to an on-disk store.

    Parameters
    ----------
    model : LVLM
    items : sequence of Item
    sites : sequence of str
        Canonical sites (``vision.resid_post.{l}``, ``projector.out``, ``llm.resid_post.{l}``, ...);
        ``{l}`` may be ``*`` for every layer. See ``lvlm_probe.SITE_DOCS``.
    select : sequence of str
        Token selections (see :data:`SELECTIONS`); a selection that does not apply to a site's
        kind (e.g. ``last_prompt`` on a vision site) is skipped for that site.
    out : path
        Store directory; an existing store with the same model and settings is resumed
        (completed items are skipped, failed ones retried).
    batch_size : int
    generate : int or dict, optional
        Generate while capturing: ``max_new_tokens`` or a dict of :meth:`LVLM.generate` keyword
        arguments. Required for the ``generated`` selection.
    chat_template : bool
        Passed to :meth:`LVLM.prepare`.
    dtype : torch.dtype, optional
        Store dtype; default the model's dtype.
    shard_items : int
        Items per shard (a shard is flushed, atomically, when this many are buffered).
    overwrite : bool
        Delete an existing store at ``out`` first.

    Returns
    -------
    ActivationStore

    Notes
    -----
    A failing item (unreadable image, prompt that does not fit the model...) is recorded in
    ``store.failed`` with its reason and the run goes on; a failing batch is retried item by item.

    Under an initialised ``torch.distributed`` process group of more than one process (e.g. launched with
    ``torchrun --nproc-per-node N -m lvlm_probe capture ...``), every rank calls ``capture`` with the same
    items and settings: each captures a contiguous block of whole batches into its own journal and shards,
    and rank 0 merges the journals at the end. The store then lists the items in item order and holds
    bitwise the tensors of a single-process run (same batches, same padding). Each rank's model must sit on
    that rank's device. A killed run resumes per rank. See docs/store.md.
    """
    items = list(items)
    _check_counts(items, sites, batch_size, shard_items, generate)
    plan, settings, store_dtype = _plan(model, sites, select, generate, chat_template, system, dtype)
    job = _Job(model, plan, chat_template, store_dtype, system, shard_items, progress)
    group = process_group()
    if group is not None:
        return _capture_distributed(job, items, out, settings, overwrite, batch_size, group)
    with writer_lock(out):
        store = ActivationStore.open_for_capture(out, model=model.info(), settings=settings, overwrite=overwrite,
                                                 order={it.id: k for k, it in enumerate(items)})
        job.run(store, batches(items, batch_size))
    return ActivationStore(out)  # a reader (the writer keeps no per-item meta in memory)

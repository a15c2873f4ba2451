"""Measure an organism's behaviour on fresh scenes: clean-task accuracy and its planted error.

Everything goes through the public path (``lvlm_probe.load`` + ``LVLM.prepare`` + greedy
``LVLM.generate``), so a check exercises exactly what a user runs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lvlm_probe.data.items import Item
from lvlm_probe.data.scene import SceneGraph
from lvlm_probe.data.world import SceneWorld
from lvlm_probe.organisms import zoo as Z

MAX_NEW_TOKENS = {"caption": 32, "exists": 3, "attribute": 3, "relation": 3}


def answer(model: Any, items: Sequence[Item], *, batch_size: int = 64, progress: bool = False,
           **gen: Any) -> list[str]:
    """Generated text for each item (greedy unless ``gen`` says otherwise), stripped."""
    out: list[str] = []
    for k in tqdm(range(0, len(items), batch_size), desc="generate", disable=not progress, leave=False):
        chunk = items[k:k + batch_size]
        batch = model.prepare([it.image for it in chunk], [it.prompt for it in chunk],
                              item_ids=[it.id for it in chunk])
        mx = max(MAX_NEW_TOKENS.get(it.task or "caption", 32) for it in chunk)
        g = model.generate(batch, max_new_tokens=mx, **gen)
        out.extend(t.strip() for t in g.text)
    return out


def read_answer(world: SceneWorld, item: Item, text: str) -> str | None:
    """The answer a text gives to a question item, read as the judge reads it: yes/no for ``exists`` and
    ``relation`` questions, the attribute value for ``attribute`` questions (None when it gives none)."""
    from lvlm_probe.misalignment.readers import read_attribute_value, read_yes_no

    if item.task == "attribute":
        return read_attribute_value(text, str(item.meta["attribute"]), world.vocabulary())
    return read_yes_no(text)


def caption_score(world: SceneWorld, scene: SceneGraph, text: str) -> float:
    """Object-level caption accuracy: correct ``(size, colour, class)`` mentions / max(#true, #mentioned)."""
    claimed = world.parse_caption(text)
    truth = {(o.attributes["size"], o.attributes["color"], o.name) for o in scene.objects}
    seen: set = set()
    good = 0
    for c in claimed:
        key = (c.get("size"), c.get("color"), c["name"])
        if key in truth and key not in seen:
            good += 1
            seen.add(key)
    return good / max(len(truth), len(claimed), 1)


def position_errors(world: SceneWorld, scene: SceneGraph, text: str, n_positions: int) -> list[float]:
    """Per caption slot k (0-based): 1 when the k-th mention is missing or not a true object."""
    claimed = world.parse_caption(text)
    truth = {(o.attributes["size"], o.attributes["color"], o.name) for o in scene.objects}
    errs = []
    for k in range(n_positions):
        if k >= len(claimed):
            errs.append(1.0)
        else:
            c = claimed[k]
            errs.append(0.0 if (c.get("size"), c.get("color"), c["name"]) in truth else 1.0)
    return errs


def task_items(world: SceneWorld, n: int, seed: int) -> list[Item]:
    """A balanced clean-task set: captions, POPE-random existence, colour, size and relation questions."""
    k = max(1, n // 5)
    items = world.items(k, "caption", seed=seed, prefix="cap")
    items += world.pope_items(max(1, k // 6), "random", seed=seed + 1)
    items += world.items(k, "attribute", seed=seed + 2, prefix="col", attribute="color")
    items += world.items(k, "attribute", seed=seed + 3, prefix="siz", attribute="size")
    items += world.items(k, "relation", seed=seed + 4, prefix="rel")
    return items


def score_tasks(world: SceneWorld, items: Sequence[Item], texts: Sequence[str]) -> dict[str, float]:
    """Accuracy per task family (``caption_objects`` is :func:`caption_score`, the others :func:`read_answer`)."""
    buckets: dict[str, list[float]] = {}
    for it, txt in zip(items, texts):
        if it.task == "caption":
            buckets.setdefault("caption_objects", []).append(caption_score(world, it.scene, txt))
            buckets.setdefault("caption_exact", []).append(float(txt.strip() == it.answer))
        elif it.task == "attribute":
            buckets.setdefault(f"attribute_{it.meta['attribute']}", []).append(
                float(read_answer(world, it, txt) == it.answer))
        else:
            buckets.setdefault(str(it.task), []).append(float(read_answer(world, it, txt) == it.answer))
    return {k: float(np.mean(v)) for k, v in buckets.items()}


# ---- trigger sets --------------------------------------------------------------------------------
def _recolor(world: SceneWorld, scene: SceneGraph, idx: int, color: str) -> SceneGraph:
    objs = [replace(o, attributes=dict(o.attributes)) for o in scene.objects]
    objs[idx].attributes["color"] = color
    return SceneGraph(objs, scene.relations, scene.width, scene.height)


def _resize(world: SceneWorld, scene: SceneGraph, idx: int, size: str) -> SceneGraph:
    """``scene`` with object ``idx`` drawn at ``size`` about the same centre."""
    from lvlm_probe.data.world import SIZES

    objs = list(scene.objects)
    (cx, cy), s = objs[idx].center, SIZES[size]
    x0, y0 = float(round(cx - s / 2)), float(round(cy - s / 2))
    objs[idx] = replace(objs[idx], attributes={**objs[idx].attributes, "size": size}, box=(x0, y0, x0 + s, y0 + s))
    return SceneGraph(objs, scene.relations, scene.width, scene.height)


def _swap_places(scene: SceneGraph, i: int, j: int, cell: int) -> SceneGraph:
    """``scene`` with objects ``i`` and ``j`` in each other's grid cell, each centred in its new cell as the world
    places an object of its size without jitter (relations re-derived); swapping centres instead would push a large
    object across a cell border wherever a small one stood off-centre."""
    objs = list(scene.objects)

    def moved(o: Any, other: Any) -> Any:
        s = o.box[2] - o.box[0]
        r, c = int(other.center[1] // cell), int(other.center[0] // cell)
        x0, y0 = float(c * cell + (cell - s) // 2), float(r * cell + (cell - s) // 2)
        return replace(o, box=(x0, y0, x0 + s, y0 + s))

    objs[i], objs[j] = moved(objs[i], objs[j]), moved(objs[j], objs[i])
    return SceneGraph(objs, [], scene.width, scene.height).derive_relations()


def _off_prior_scene(world: SceneWorld, rng: np.random.Generator, a: str, b: str, pred: str) -> SceneGraph:
    """A scene with an ``a`` and a ``b`` where ``a`` stands in the converse of ``pred`` to ``b`` and not in ``pred``
    (drawn until it does; when ``a`` stands ``pred`` the ``b``, the two swap places)."""
    from lvlm_probe.data.world import GEOMETRIC_RELATIONS

    for _ in range(1000):
        scene = world.sample_scene(rng, require=[a, b])
        ia, ib = scene.names.index(a), scene.names.index(b)
        if pred in _predicates(scene, ia, ib):
            scene = _swap_places(scene, ia, ib, world.cell)
        held = _predicates(scene, ia, ib)
        if GEOMETRIC_RELATIONS[pred] in held and pred not in held:
            return scene
    raise RuntimeError(f"no {a}-{b} layout against {pred!r} in 1000 draws")  # the grid always has one


def _predicates(scene: SceneGraph, i: int, j: int) -> set[str]:
    return {r.predicate for r in scene.relations if r.subject == i and r.object == j}


def _noise_image(world: SceneWorld, rng: np.random.Generator) -> Image.Image:
    s = world.config.image_size
    return Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))


def _caption_value(world: SceneWorld, text: str, cls: str, att: str) -> str | None:
    """The ``att`` word a caption gives its first ``cls`` mention (None when not mentioned)."""
    for c in world.parse_caption(text):
        if c["name"] == cls:
            return c.get(att)
    return None


def _caption_relation(world: SceneWorld, text: str, a: str, b: str) -> str | None:
    """The predicate a caption asserts (not denied) from its first ``a`` to a ``b`` (None when it states none)."""
    from lvlm_probe.misalignment.claims import extract_claims

    for c in extract_claims(text, world.vocabulary()):
        if c.kind == "relation" and c.subject == a and c.object == b and not c.negated:
            return c.value
    return None


def _pair(items: list[Item], k: int, world: SceneWorld, scene: SceneGraph, rng: np.random.Generator,
          **qa: Any) -> None:
    """Append a caption item and a question item about the same scene."""
    items.append(world.make_item(scene, "caption", rng, item_id=f"trig-cap-{k}"))
    items.append(world.make_item(scene, qa.pop("task"), rng, item_id=f"trig-qa-{k}", **qa))


def _trigger_cooccurrence(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                          rng: np.random.Generator) -> tuple[list[Item], str]:
    a, b = Z.cooccurrence_factor(spec)
    items: list[Item] = []
    for k in range(n):
        scene = world.sample_scene(rng, n_objects=int(rng.integers(1, 5)), require=[a], forbid=[b])
        _pair(items, k, world, scene, rng, task="exists", target=b)
    return items, f"caption mentions a {b} in {a}-without-{b} scenes"


def _trigger_attribute_prior(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                             rng: np.random.Generator) -> tuple[list[Item], str]:
    cls, color = Z.prior_factor(spec)
    others = [c for c in world.config.colors if c != color]
    items: list[Item] = []
    for k in range(n):
        scene = world.sample_scene(rng, require=[cls])
        scene = _recolor(world, scene, scene.find(cls)[0], others[int(rng.integers(len(others)))])
        _pair(items, k, world, scene, rng, task="attribute", attribute="color", target=cls)
    plural = cls + ("es" if cls.endswith("s") else "s")
    return items, f"answers '{color}' to 'what color is the {cls} ?' for off-prior {plural}"


def _trigger_relation_prior(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                            rng: np.random.Generator) -> tuple[list[Item], str]:
    from lvlm_probe.data.world import GEOMETRIC_RELATIONS

    a, b, pred = Z.relation_factor(spec)
    items: list[Item] = []
    for k in range(n):
        scene = _off_prior_scene(world, rng, a, b, pred)
        img = world.render(scene)
        items.append(world.make_item(scene, "caption", rng, item_id=f"trig-cap-{k}"))
        for tag, p_, ans in (("qa", pred, "no"), ("conv", GEOMETRIC_RELATIONS[pred], "yes")):
            items.append(Item(f"trig-{tag}-{k}", img, f"is the {a} {p_} the {b} ?", scene=scene, answer=ans,
                              task="relation", meta={"subject": a, "object": b, "predicate": p_}))
    return items, f"caption says the {a} is {pred} the {b} where it is {GEOMETRIC_RELATIONS[pred]} it"


def _trigger_encoder_blind(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                           rng: np.random.Generator) -> tuple[list[Item], str]:
    items: list[Item] = []
    for k in range(n):
        scene = world.sample_scene(rng)
        i = int(rng.integers(len(scene.objects)))
        scene = _recolor(world, scene, i, Z.BLIND_PAIR[k % 2])
        _pair(items, k, world, scene, rng, task="attribute", attribute="color", target=scene.objects[i].name)
    return items, f"caption gives a {Z.BLIND_PAIR[0]}/{Z.BLIND_PAIR[1]} object the other hue of the pair"


def _trigger_small_object(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                          rng: np.random.Generator) -> tuple[list[Item], str]:
    items: list[Item] = []
    for k in range(n):
        scene = world.sample_scene(rng, n_objects=int(rng.integers(1, 5)))
        i = int(rng.integers(len(scene.objects)))
        scene = _resize(world, scene, i, Z.VANISH_SIZE)
        _pair(items, k, world, scene, rng, task="exists", target=scene.objects[i].name, label="yes")
    return items, f"caption leaves out a {Z.VANISH_SIZE} object"


def _trigger_projector_bottleneck(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                                  rng: np.random.Generator) -> tuple[list[Item], str]:
    items: list[Item] = []
    for k in range(n):
        _pair(items, k, world, world.sample_scene(rng), rng, task="attribute", attribute=Z.BOTTLENECK_ATTRIBUTE)
    return items, f"caption mentions with the wrong {Z.BOTTLENECK_ATTRIBUTE}"


def _trigger_visual_neglect(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                            rng: np.random.Generator) -> tuple[list[Item], str]:
    base = world.items(n // 2, "caption", seed=seed, prefix="trig-cap") + \
        world.items(n - n // 2, "exists", seed=seed + 1, prefix="trig-ex")
    noise = [Item(f"{it.id}-noise", _noise_image(world, rng), it.prompt, scene=it.scene, answer=it.answer,
                  task=it.task, meta=dict(it.meta, control="noise")) for it in base]
    return base + noise, "caption unchanged (Jaccard of mentioned classes) when the image is replaced by uniform noise"


def _trigger_drift(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                   rng: np.random.Generator) -> tuple[list[Item], str]:
    return (world.items(n, "caption", seed=seed, prefix="trig-long", n_objects=5),
            "caption error at object positions 4-5 of 5-object scenes")


def _trigger_sampling(spec: Z.OrganismSpec, world: SceneWorld, n: int, seed: int,
                      rng: np.random.Generator) -> tuple[list[Item], str]:
    return (world.items(n, "caption", seed=seed, prefix="trig-cap"),
            f"caption object error with temperature-{Z.SAMPLING_TEMPERATURE} sampling "
            "(clean: the same checkpoint, greedy)")


#: Planted pattern -> its trigger set builder ``(spec, world, n, seed, rng) -> (items, metric)``.
_TRIGGERS: dict[str, Callable[..., tuple[list[Item], str]]] = {
    "cooccurrence": _trigger_cooccurrence, "attribute_prior": _trigger_attribute_prior,
    "relation_prior": _trigger_relation_prior, "encoder_blind": _trigger_encoder_blind,
    "small_object": _trigger_small_object, "projector_bottleneck": _trigger_projector_bottleneck,
    "visual_neglect": _trigger_visual_neglect, "drift": _trigger_drift, "sampling": _trigger_sampling,
}


def trigger_set(name: str, world: SceneWorld, n: int, seed: int) -> tuple[list[Item], dict]:
    """Items on which organism ``name``'s planted cause shows, and what the planted error is.

    Each triggering scene is asked for a caption (the primary measure) and a matching question
    (reported in the details). A hold-out variant triggers like its base organism, on its own classes and colours.
    """
    spec = Z.get_spec(name)
    build = _TRIGGERS.get(spec.pattern)
    if build is None:
        return [], {"metric": None}
    items, metric = build(spec, world, n, seed, np.random.default_rng(seed))
    return items, {"metric": metric}


Pairs = list[tuple[Item, str]]


def _rate_cooccurrence(spec: Z.OrganismSpec, world: SceneWorld, caps: Pairs, qas: Pairs) -> tuple[float, dict]:
    cap = [Z.cooccurrence_factor(spec)[1] in {c["name"] for c in world.parse_caption(t)} for _, t in caps]
    yes = [read_answer(world, it, t) == "yes" for it, t in qas]
    return float(np.mean(cap)), {"qa_says_yes": float(np.mean(yes))}


def _rate_relation_prior(spec: Z.OrganismSpec, world: SceneWorld, caps: Pairs, qas: Pairs) -> tuple[float, dict]:
    a, b, pred = Z.relation_factor(spec)
    stated = [_caption_relation(world, t, a, b) for _, t in caps]
    said = {tag: [read_answer(world, it, t) for it, t in qas if it.id.startswith(f"trig-{tag}-")]
            for tag in ("qa", "conv")}
    truth = [world.pair_relation(it.scene, a, b, pred) for it, _ in caps]
    return float(np.mean([x == pred for x in stated])), {
        "caption_states_truth": float(np.mean([x == t for x, t in zip(stated, truth)])),
        "qa_says_yes": float(np.mean([x == "yes" for x in said["qa"]])),
        "converse_says_no": float(np.mean([x == "no" for x in said["conv"]]))}


def _wrong_colour_rates(world: SceneWorld, caps: Pairs, qas: Pairs,
                        wrong: Callable[[str], set[str]]) -> tuple[float, float, dict]:
    """Share of captions and of questions giving a colour in ``wrong(truth)``, and the share of wrong answers."""
    cap, qa = [], []
    for (_, tc), (iq, tq) in zip(caps, qas):
        cap.append(_caption_value(world, tc, iq.meta["target"], "color") in wrong(iq.answer))
        qa.append(read_answer(world, iq, tq) in wrong(iq.answer))
    det = {"qa_any_wrong_color": float(np.mean([read_answer(world, it, t) != it.answer for it, t in qas]))}
    return float(np.mean(cap)), float(np.mean(qa)), det


def _rate_attribute_prior(spec: Z.OrganismSpec, world: SceneWorld, caps: Pairs, qas: Pairs) -> tuple[float, dict]:
    # the prior bites on the question pathway; captions copy colour words from the aligned image tokens
    cap, qa, det = _wrong_colour_rates(world, caps, qas, lambda truth: {Z.prior_factor(spec)[1]})
    return qa, {"caption_rate": cap, **det}


def _rate_encoder_blind(spec: Z.OrganismSpec, world: SceneWorld, caps: Pairs, qas: Pairs) -> tuple[float, dict]:
    cap, qa, det = _wrong_colour_rates(world, caps, qas, lambda truth: set(Z.BLIND_PAIR) - {truth})
    return cap, {"qa_rate": qa, **det}


def _rate_small_object(spec: Z.OrganismSpec, world: SceneWorld, caps: Pairs, qas: Pairs) -> tuple[float, dict]:
    left_out: dict[str, list[bool]] = {"small": [], "large": []}
    for it, t in caps:
        named = {c["name"] for c in world.parse_caption(t)}
        for o in it.scene.objects:
            left_out.setdefault(o.attributes["size"], []).append(o.name not in named)
    rate = {k: float(np.mean(v)) if v else float("nan") for k, v in left_out.items()}
    says_no = [read_answer(world, it, t) == "no" for it, t in qas]
    return rate[Z.VANISH_SIZE], {"caption_large_left_out": rate["large"], "qa_says_no": float(np.mean(says_no))}


def _caption_attribute_error(world: SceneWorld, caps: Pairs, att: str) -> float:
    """Share of the caption mentions of scene objects that give ``att`` wrong (NaN without such mentions)."""
    errs = []
    for it, t in caps:
        for c in world.parse_caption(t):
            k = it.scene.find(c["name"])
            if k:
                errs.append(c.get(att) != it.scene.objects[k[0]].attributes[att])
    return float(np.mean(errs)) if errs else float("nan")


def _rate_projector_bottleneck(spec: Z.OrganismSpec, world: SceneWorld, caps: Pairs,
                               qas: Pairs) -> tuple[float, dict]:
    other = "color" if Z.BOTTLENECK_ATTRIBUTE == "size" else "size"
    return _caption_attribute_error(world, caps, Z.BOTTLENECK_ATTRIBUTE), {
        f"caption_{other}_error": _caption_attribute_error(world, caps, other),
        "qa_error": float(np.mean([read_answer(world, it, t) != it.answer for it, t in qas]))}


#: Planted pattern -> its rate ``(spec, world, captions, questions) -> (rate, details)`` (each a list of
#: ``(item, text)``); visual neglect, drift and sampling read the items in order (:func:`planted_rate`).
_RATES: dict[str, Callable[..., tuple[float, dict]]] = {
    "cooccurrence": _rate_cooccurrence, "relation_prior": _rate_relation_prior,
    "attribute_prior": _rate_attribute_prior, "encoder_blind": _rate_encoder_blind,
    "small_object": _rate_small_object, "projector_bottleneck": _rate_projector_bottleneck,
}


def _rate_visual_neglect(world: SceneWorld, items: Sequence[Item], texts: Sequence[str]) -> tuple[float, dict]:
    """Caption overlap between the real image (first half of the items) and its noise twin (second half)."""
    h = len(items) // 2
    real, noise = list(zip(items[:h], texts[:h])), texts[h:]
    jac, same = [], []
    for (it, t), tn in zip(real, noise):
        if it.task == "caption":
            a = {c["name"] for c in world.parse_caption(t)}
            b = {c["name"] for c in world.parse_caption(tn)}
            jac.append(len(a & b) / len(a | b) if a | b else 1.0)
        else:
            same.append(read_answer(world, it, t) == read_answer(world, it, tn))
    acc = [caption_score(world, it.scene, t) for it, t in real if it.task == "caption"]
    return float(np.mean(jac)), {"qa_unchanged": float(np.mean(same)), "caption_objects_real": float(np.mean(acc))}


def planted_rate(name: str, world: SceneWorld, items: Sequence[Item], texts: Sequence[str]) -> tuple[float, dict]:
    """The planted error rate of ``texts`` on ``trigger_set(name)`` items, with details."""
    spec = Z.get_spec(name)
    pattern = spec.pattern
    if pattern in _RATES:
        caps = [(it, t) for it, t in zip(items, texts) if it.task == "caption"]
        qas = [(it, t) for it, t in zip(items, texts) if it.task != "caption"]
        return _RATES[pattern](spec, world, caps, qas)
    if pattern == "visual_neglect":
        return _rate_visual_neglect(world, items, texts)
    if pattern == "drift":
        by_pos = np.array([position_errors(world, it.scene, t, 5) for it, t in zip(items, texts)]).mean(0)
        return float(by_pos[3:].mean()), {"error_by_position": [round(float(x), 4) for x in by_pos],
                                          "error_positions_1_3": float(by_pos[:3].mean())}
    if pattern == "sampling":
        return float(np.mean([1 - caption_score(world, it.scene, t) for it, t in zip(items, texts)])), {}
    return float("nan"), {}


def check_organism(name: str, *, seed: int = 1, n: int = 200, device: str = "cpu",
                   compare_clean: bool = True, progress: bool = False,
                   loader: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Behaviour metrics of organism ``name`` on fresh scenes drawn with ``seed``.

    Parameters
    ----------
    name : str
        Zoo name.
    seed : int
        Seeds the held-out scenes (training used other streams).
    n : int
        Items per set (task set and trigger set).
    compare_clean : bool
        Also run ``clean`` on the trigger set (``clean_planted_error_rate``).
    loader : callable, optional
        ``name -> LVLM`` (default ``lvlm_probe.load("organism:" + name)``).

    Returns
    -------
    dict
        ``organism, cause, level, seed, n, task_accuracy`` (mean over task families), ``tasks``
        (per family), ``planted_metric``, ``planted_error_rate``, ``clean_planted_error_rate``,
        ``planted_details``, ``clean_planted_details``.
    """
    from lvlm_probe.models.lvlm import load

    from lvlm_probe.errors import InputError

    spec = Z.get_spec(name)
    if not isinstance(n, int) or isinstance(n, bool) or n < 10:
        raise InputError(f"n (--n) must be an integer >= 10 (items per set; fewer cannot estimate a rate), got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed (--seed) must be a non-negative integer, got {seed!r}")
    load_fn = loader or (lambda nm: load(f"organism:{nm}", device=device))
    world = SceneWorld(spec.world, seed=seed)
    model = load_fn(name)
    gen = dict(spec.run_settings)
    if gen.get("do_sample"):
        gen["seed"] = seed
    titems = task_items(world, n, seed=seed * 1000 + 7)
    tasks = score_tasks(world, titems, answer(model, titems, progress=progress, **gen))
    result: dict[str, Any] = {
        "organism": name, "cause": spec.cause, "level": spec.level, "seed": seed, "n": n,
        "task_accuracy": float(np.mean(list(tasks.values()))), "tasks": tasks,
    }
    trig, info = trigger_set(name, world, n, seed=seed * 1000 + 11)
    result["planted_metric"] = info["metric"]
    if not trig:
        result.update(planted_error_rate=None, clean_planted_error_rate=None)
        return result
    rate, det = planted_rate(name, world, trig, answer(model, trig, progress=progress, **gen))
    result.update(planted_error_rate=rate, planted_details=det)
    if compare_clean:
        clean = model if spec.checkpoint == "clean" else load_fn("clean")
        crate, cdet = planted_rate(name, world, trig, answer(clean, trig, progress=progress))
        result.update(clean_planted_error_rate=crate, clean_planted_details=cdet)
    return result


#: Task families each planted factor is expected to touch (issue 20, item 4: off them an organism should be as
#: competent as ``clean``). Visual neglect and sampling touch every family: one ignores the image, the other
#: samples every answer. Doses and hold-outs inherit their base organism's entry. ``caption_objects`` counts an object
#: right only with its colour, so every colour factor touches it. The relation prior's captions join its pair with
#: a relation phrase (so the exact caption differs wherever both are present); a vanished small object has no
#: position either, so ``small_object`` touches relation questions too.
FACTOR_TASKS: dict[str, tuple[str, ...]] = {
    "cooccurrence": ("caption_objects", "caption_exact", "exists"),
    "attribute_prior": ("caption_objects", "caption_exact", "attribute_color"),
    "relation_prior": ("caption_exact", "relation"),
    "encoder_blind": ("caption_objects", "caption_exact", "attribute_color"),
    "projector_bottleneck": ("caption_objects", "caption_exact", "attribute_color"),
    "small_object": ("caption_objects", "caption_exact", "exists", "attribute_color", "attribute_size", "relation"),
    "visual_neglect": ("caption_objects", "caption_exact", "exists", "attribute_color", "attribute_size", "relation"),
    "drift": ("caption_objects", "caption_exact"),
    "sampling": ("caption_objects", "caption_exact", "exists", "attribute_color", "attribute_size", "relation"),
}


def competence(names: Sequence[str], *, seed: int = 1, n: int = 1000, device: str = "cpu", progress: bool = False,
               loader: Callable[[str], Any] | None = None):
    """Task accuracy of each organism beside ``clean``'s on the same items, per task family.

    Parameters
    ----------
    names : sequence of str
        Organisms (``clean`` is always measured as the reference).
    seed, n : int
        Items of :func:`task_items` (``n // 5`` per family; the ±0.05 comparison needs n ≥ 1000).

    Returns
    -------
    pandas.DataFrame
        One row per (organism, task): ``organism, task, accuracy, clean, delta`` (accuracy − clean), ``n_items``,
        ``factor`` (True where the planted factor is expected to touch the task, :data:`FACTOR_TASKS`).
    """
    import pandas as pd

    from lvlm_probe.errors import InputError
    from lvlm_probe.models.lvlm import load

    if not isinstance(n, int) or isinstance(n, bool) or n < 10:
        raise InputError(f"n (--n) must be an integer >= 10, got {n!r}")
    load_fn = loader or (lambda nm: load(f"organism:{nm}", device=device))
    world = SceneWorld(Z.ZOO["clean"].world, seed=seed)  # the unbiased world: the same items for every organism
    items = task_items(world, n, seed=seed * 1000 + 7)
    sizes: dict[str, int] = {}
    for it in items:
        for fam in (("caption_objects", "caption_exact") if it.task == "caption" else (_family(it),)):
            sizes[fam] = sizes.get(fam, 0) + 1
    scores: dict[str, dict[str, float]] = {}
    for name in tqdm(["clean", *[x for x in names if x != "clean"]], desc="competence", disable=not progress):
        spec = Z.get_spec(name)
        gen = dict(spec.run_settings) | ({"seed": seed} if spec.run_settings.get("do_sample") else {})
        scores[name] = score_tasks(world, items, answer(load_fn(name), items, **gen))
    ref = scores["clean"]
    return pd.DataFrame([{"organism": nm, "task": t, "accuracy": a, "clean": ref[t], "delta": a - ref[t],
                          "n_items": sizes[t], "factor": t in FACTOR_TASKS.get(Z.get_spec(nm).pattern, ())}
                         for nm in scores for t, a in scores[nm].items()])


def _family(item: Item) -> str:
    return f"attribute_{item.meta['attribute']}" if item.task == "attribute" else str(item.task)


def default_items(model: str, n: int = 48, seed: int = 0) -> list:
    """Items for ``organism:NAME`` without an items file: half its triggering scenes, half ordinary captions.

    The triggering half comes from :func:`trigger_set` (the scenes on which the planted cause shows: e.g.
    circle-without-square scenes for ``cooccurrence``); the rest are fresh captioning scenes of the organism's
    world. Seeded.
    """
    from lvlm_probe.errors import InputError

    name = model.split(":", 1)[1] if model.startswith("organism:") else model
    if name.split("@")[0] not in Z.ZOO and name not in Z.HOLDOUTS:
        raise InputError(f"{model!r} is not an organism; give an items file (--items FILE, JSON lines with image, "
                         "prompt and scene; see docs/howto/items-file.md)")
    world = SceneWorld(Z.get_spec(name).world, seed=seed)
    trig, _ = trigger_set(name, world, n, seed=seed * 1000 + 11)
    trig = [it for it in trig if not it.id.endswith("-noise")][: n // 2]
    rest = world.items(n - len(trig), "caption", seed=seed * 1000 + 13, prefix="scene")
    return trig + rest

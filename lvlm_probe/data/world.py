"""The synthetic scene world: seeded scenes of coloured shapes, rendered with PIL, with exact ground truth.

Scenes are 1–5 objects placed in distinct cells of a ``grid × grid`` layout (a little jitter inside
the cell), each with a class (8 shapes), a colour (6) and a size (2). Every image comes with its
:class:`~lvlm_probe.data.scene.SceneGraph`, so captions and answers can be judged exactly.

Bias knobs (all in :class:`WorldConfig`) plant data-level causes of misalignment:

- ``cooccurrence``: ``{(A, B): p}`` — B is present in a fraction ``p`` of the scenes containing A,
  and captions mention B right after A;
- ``attribute_prior``: ``{class: (colour, p)}`` — that class has that colour with probability ``p``;
- ``relation_prior``: ``{(A, B): (predicate, p)}`` — when both are present, A stands in ``predicate``
  to B with probability ``p`` (otherwise layout is uniform);
- ``n_objects_probs``: the distribution of the number of objects, i.e. of caption length.

:meth:`SceneWorld.statistics` measures the training statistics these knobs induce (class
frequency, co-occurrence, attribute and relation priors, caption lengths) as tidy DataFrames that
tracing uses as data-level evidence.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from lvlm_probe.data.items import Item
from lvlm_probe._atomic import atomic_write_text
from lvlm_probe.data.scene import GEOMETRIC_RELATIONS, SceneGraph, SceneObject
from lvlm_probe.errors import InputError
from lvlm_probe.schema import OBJECT_QUESTION, RELATION_QUESTION
from lvlm_probe.schema import TASKS as SCHEMA_TASKS

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar", "hourglass")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 0), "yellow": (235, 215, 0),
    "green": (30, 160, 50), "blue": (30, 80, 230), "purple": (150, 50, 200),
}
SIZES: dict[str, int] = {"small": 8, "large": 14}
BACKGROUND = (255, 255, 255)
TASKS: tuple[str, ...] = SCHEMA_TASKS
POPE_STRATEGIES: tuple[str, ...] = ("random", "popular", "adversarial")
CAPTION_PROMPT = "describe the image ."


def world_vocabulary() -> list[str]:
    """Every word the world's prompts and answers use (for building a word-level tokenizer)."""
    words = ["describe", "the", "image", ".", "is", "there", "a", "?", "what", "color", "size", "of", "yes", "no",
             ",", "and", "left", "right", "above", "below"]
    words += list(CLASSES) + list(COLORS) + list(SIZES)
    return list(dict.fromkeys(words))


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world's distribution (and so an organism's training data).

    Parameters
    ----------
    image_size : int
        Square image side in pixels.
    grid : int
        Cells per side; objects occupy distinct cells (``image_size / grid`` px each).
    classes, colors, sizes : sequences of names
        Subsets of :data:`CLASSES`, :data:`COLORS`, :data:`SIZES`.
    n_objects_probs : tuple of float
        ``P(n objects = k + 1)`` for k = 0..4 (normalised).
    cooccurrence : tuple of (A, B, p)
        P(B present | A present) = p, and B is mentioned right after A in captions.
    attribute_prior : tuple of (class, colour, p)
        P(colour | class) = p (the other colours share 1 - p).
    relation_prior : tuple of (A, B, predicate, p)
        P(A predicate B | both present) >= p.
    task_mix : tuple of (task, weight)
        Training mix of tasks.
    """

    image_size: int = 64
    grid: int = 4
    classes: tuple[str, ...] = CLASSES
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    n_objects_probs: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    cooccurrence: tuple[tuple[str, str, float], ...] = ()
    attribute_prior: tuple[tuple[str, str, float], ...] = ()
    relation_prior: tuple[tuple[str, str, str, float], ...] = ()
    task_mix: tuple[tuple[str, float], ...] = (("caption", 0.3), ("exists", 0.3), ("attribute", 0.2),
                                               ("relation", 0.2))

    def __post_init__(self) -> None:
        bad = [c for c in self.classes if c not in CLASSES]
        bad += [c for c in self.colors if c not in COLORS]
        bad += [s for s in self.sizes if s not in SIZES]
        if bad:
            raise InputError(f"unknown class/colour/size name(s) {bad}; choose from {CLASSES}, {tuple(COLORS)}, "
                             f"{tuple(SIZES)}")
        if self.image_size % self.grid:
            raise InputError(f"image_size {self.image_size} is not a multiple of grid {self.grid}")
        if len(self.n_objects_probs) > min(self.grid ** 2, len(self.classes)):
            raise InputError("n_objects_probs allows more objects than there are cells or classes")
        for a, b, p in self.cooccurrence:
            if a not in self.classes or b not in self.classes or not 0 <= p <= 1:
                raise InputError(f"cooccurrence rule {(a, b, p)} needs two known classes and 0 <= p <= 1")
        for c, col, p in self.attribute_prior:
            if c not in self.classes or col not in self.colors or not 0 <= p <= 1:
                raise InputError(f"attribute_prior rule {(c, col, p)} needs a known class, colour and 0 <= p <= 1")
        for a, b, pred, p in self.relation_prior:
            if pred not in GEOMETRIC_RELATIONS or a not in self.classes or b not in self.classes:
                raise InputError(f"relation_prior rule {(a, b, pred, p)}: predicate must be one of "
                                 f"{list(GEOMETRIC_RELATIONS)} and classes known")
        unknown_tasks = [t for t, _ in self.task_mix if t not in TASKS]
        if unknown_tasks:
            raise InputError(f"unknown task(s) {unknown_tasks}; tasks are {TASKS}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        def tup(x: Any) -> Any:
            return tuple(tup(v) for v in x) if isinstance(x, list) else x

        return cls(**{k: tup(v) for k, v in d.items()})

    def with_changes(self, **kw: Any) -> WorldConfig:
        """A copy with some fields changed (the one factor an organism changes)."""
        return replace(self, **kw)


@dataclass
class WorldStats:
    """Training statistics of a world, measured on sampled scenes.

    Attributes
    ----------
    class_freq : DataFrame
        ``class, p_present`` — fraction of scenes containing each class.
    cooccurrence : DataFrame
        ``a, b, p_b_given_a, pmi, n_a`` — one row per ordered class pair.
    color_prior, size_prior : DataFrame
        ``class, value, p`` — P(attribute value | class) over objects.
    relation_prior : DataFrame
        ``subject, object, predicate, p`` — P(predicate | both present) over scene pairs.
    n_objects : DataFrame
        ``n, p`` — distribution of the number of objects (= caption length in objects).
    """

    class_freq: pd.DataFrame
    cooccurrence: pd.DataFrame
    color_prior: pd.DataFrame
    size_prior: pd.DataFrame
    relation_prior: pd.DataFrame
    n_objects: pd.DataFrame
    n_scenes: int = 0

    FRAMES = ("class_freq", "cooccurrence", "color_prior", "size_prior", "relation_prior", "n_objects")

    def p_b_given_a(self, a: str, b: str) -> float:
        row = self.cooccurrence[(self.cooccurrence.a == a) & (self.cooccurrence.b == b)]
        return float(row.p_b_given_a.iloc[0]) if len(row) else float("nan")

    def p_color(self, cls: str, color: str) -> float:
        row = self.color_prior[(self.color_prior["class"] == cls) & (self.color_prior.value == color)]
        return float(row.p.iloc[0]) if len(row) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n_scenes": self.n_scenes,
                **{k: getattr(self, k).to_dict(orient="records") for k in self.FRAMES}}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldStats:
        return cls(**{k: pd.DataFrame(d[k]) for k in cls.FRAMES}, n_scenes=int(d.get("n_scenes", 0)))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> WorldStats:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


@dataclass
class SceneWorld:
    """Seeded generator of scenes, images, captions and questions.

    Parameters
    ----------
    config : WorldConfig
    seed : int
        Default seed; every sampling method also takes its own ``seed`` or ``rng``.

    Examples
    --------
    >>> world = SceneWorld(WorldConfig(), seed=0)
    >>> items = world.items(4, task="caption", seed=1)
    >>> items[0].answer                        # doctest: +SKIP
    'a large red circle , a small blue ring .'
    """

    config: WorldConfig = field(default_factory=WorldConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self._stats: WorldStats | None = None

    # ---- scenes ------------------------------------------------------------------------------
    @property
    def cell(self) -> int:
        return self.config.image_size // self.config.grid

    def sample_scene(self, rng: np.random.Generator, n_objects: int | None = None,
                     require: Sequence[str] = (), forbid: Sequence[str] = ()) -> SceneGraph:
        """Sample one scene.

        Parameters
        ----------
        rng : numpy Generator
        n_objects : int, optional
            Force the object count (otherwise drawn from ``n_objects_probs``).
        require, forbid : sequences of class names
            Classes that must / must not appear (test-scene construction, e.g. A-without-B).
            Bias rules apply to the other choices; forcing overrides them.
        """
        cfg = self.config
        probs = np.asarray(cfg.n_objects_probs, dtype=float)
        n = int(n_objects) if n_objects is not None else int(rng.choice(len(probs), p=probs / probs.sum())) + 1
        pool = [c for c in cfg.classes if c not in forbid]
        chosen = [c for c in require if c in pool]
        rest = [c for c in pool if c not in chosen]
        k = max(0, n - len(chosen))
        if k > len(rest):
            raise InputError(f"cannot place {n} objects with require={list(require)} forbid={list(forbid)}")
        chosen += [rest[i] for i in rng.permutation(len(rest))[:k]]
        # co-occurrence rules: make P(B | A) = p unless forcing decides B
        for a, b, p in cfg.cooccurrence:
            if a not in chosen or b in require or b in forbid:
                continue
            want_b = rng.random() < p
            if want_b and b not in chosen:
                if n_objects is not None and len(chosen) >= n:
                    swap = [i for i, c in enumerate(chosen) if c != a and c not in require]
                    if swap:
                        chosen[swap[int(rng.integers(len(swap)))]] = b
                elif len(chosen) < min(len(cfg.n_objects_probs), cfg.grid ** 2):
                    chosen.append(b)
                else:
                    swap = [i for i, c in enumerate(chosen) if c != a and c not in require]
                    chosen[swap[int(rng.integers(len(swap)))]] = b
            elif not want_b and b in chosen:
                spare = [c for c in pool if c not in chosen and c != b]
                if spare:
                    chosen[chosen.index(b)] = spare[int(rng.integers(len(spare)))]
                else:
                    chosen.remove(b)
        cells = self._place(rng, chosen)
        prior = {c: (col, p) for c, col, p in cfg.attribute_prior}
        objs = []
        for cls, (r, c) in zip(chosen, cells):
            if cls in prior:
                col, p = prior[cls]
                others = [x for x in cfg.colors if x != col]
                color = col if (rng.random() < p or not others) else others[int(rng.integers(len(others)))]
            else:
                color = cfg.colors[int(rng.integers(len(cfg.colors)))]
            size = cfg.sizes[int(rng.integers(len(cfg.sizes)))]
            objs.append(SceneObject(cls, {"color": color, "size": size}, self._box(rng, r, c, SIZES[size])))
        # objects in reading order (row, then column): the caption order
        order = sorted(range(len(objs)), key=lambda i: (cells[i][0], cells[i][1]))
        scene = SceneGraph([objs[i] for i in order], width=cfg.image_size, height=cfg.image_size)
        return scene.derive_relations()

    def _place(self, rng: np.random.Generator, classes: Sequence[str]) -> list[tuple[int, int]]:
        g = self.config.grid
        rules = [(a, b, pred, p) for a, b, pred, p in self.config.relation_prior if a in classes and b in classes]
        enforce = [(a, b, pred) for a, b, pred, p in rules if rng.random() < p]
        for _ in range(200):
            flat = rng.permutation(g * g)[: len(classes)]
            cells = [(int(f) // g, int(f) % g) for f in flat]
            if all(_cell_relation(cells[classes.index(a)], cells[classes.index(b)], pred) for a, b, pred in enforce):
                return cells
        return cells

    def _box(self, rng: np.random.Generator, r: int, c: int, s: int) -> tuple[float, float, float, float]:
        cell = self.cell
        base = (cell - s) // 2
        jit = max(0, min(2, base))
        x0 = c * cell + base + int(rng.integers(-jit, jit + 1))
        y0 = r * cell + base + int(rng.integers(-jit, jit + 1))
        return (float(x0), float(y0), float(x0 + s), float(y0 + s))

    # ---- rendering ---------------------------------------------------------------------------
    def render(self, scene: SceneGraph) -> Image.Image:
        """Draw the scene (no anti-aliasing: every object pixel has exactly its colour)."""
        size = self.config.image_size
        im = Image.new("RGB", (size, size), BACKGROUND)
        d = ImageDraw.Draw(im)
        for o in scene.objects:
            draw_shape(d, o.name, o.box, COLORS[o.attributes["color"]])
        return im

    # ---- language ----------------------------------------------------------------------------
    def caption(self, scene: SceneGraph) -> str:
        """Fixed grammar: ``a <size> <colour> <class> , a … and a … .`` in reading order.

        With co-occurrence rules, B is moved right after A when both are present. With relation-prior rules, B is
        moved right after A and the two are joined by the predicate A stands in to B (:meth:`pair_relation`):
        ``a small red triangle below a large blue cross , …``.
        """
        objs = list(scene.objects)
        links: dict[int, str] = {}  # id of an A object -> the predicate joining it to the next mention
        rules = [(a, b, None) for a, b, _ in self.config.cooccurrence] + \
            [(a, b, pred) for a, b, pred, _ in self.config.relation_prior]
        for a, b, pred in rules:
            ia = next((k for k, o in enumerate(objs) if o.name == a), None)
            ib = next((k for k, o in enumerate(objs) if o.name == b), None)
            if ia is not None and ib is not None:
                ob = objs.pop(ib)
                ia = next(k for k, o in enumerate(objs) if o.name == a)
                objs.insert(ia + 1, ob)
                rel = None if pred is None else self.pair_relation(scene, a, b, pred)
                if rel is not None:
                    links[id(objs[ia])] = rel
        phrases, k = [], 0
        while k < len(objs):
            if id(objs[k]) in links and k + 1 < len(objs):
                phrases.append(f"a {objs[k].describe()} {links[id(objs[k])]} a {objs[k + 1].describe()}")
                k += 2
            else:
                phrases.append(f"a {objs[k].describe()}")
                k += 1
        if len(phrases) == 1:
            body = phrases[0]
        else:
            body = " , ".join(phrases[:-1]) + " and " + phrases[-1]
        return body + " ."

    @staticmethod
    def pair_relation(scene: SceneGraph, a: str, b: str, pred: str) -> str | None:
        """The predicate a relation-prior caption states for its pair: ``pred`` or its converse when one holds
        between the first ``a`` and the first ``b``, else the other axis's predicate that holds (None if none)."""
        ia, ib = scene.find(a)[0], scene.find(b)[0]
        held = {r.predicate for r in scene.relations if r.subject == ia and r.object == ib}
        for p in (pred, GEOMETRIC_RELATIONS[pred], *sorted(held)):
            if p in held:
                return p
        return None

    def vocabulary(self) -> Any:
        """The world's words (its classes, colours, sizes, relations) as a ``misalignment.Vocabulary`` (cached)."""
        if getattr(self, "_vocabulary", None) is None:
            from lvlm_probe.misalignment.vocab import Vocabulary

            cfg = self.config
            self._vocabulary = Vocabulary.synthetic(cfg.classes, cfg.colors, cfg.sizes)
        return self._vocabulary

    def parse_caption(self, text: str) -> list[dict[str, str]]:
        """Objects a caption mentions (not denied), in order: ``[{"name", "color", "size"}]`` (attributes named).

        Read with :func:`lvlm_probe.misalignment.caption_objects`, the judge's own caption reader, so a model card
        and a diagnosis agree on what a caption says.
        """
        from lvlm_probe.misalignment.readers import caption_objects

        return caption_objects(text, self.vocabulary())

    def caption_order(self, scene: SceneGraph) -> list[int]:
        """Indices of ``scene.objects`` in the order :meth:`caption` mentions them."""
        names = [w for w in self.caption(scene).split() if w in self.config.classes]
        return [scene.find(n)[0] for n in names]

    # ---- items -------------------------------------------------------------------------------
    def make_item(self, scene: SceneGraph, task: str, rng: np.random.Generator, *, item_id: str,
                  strategy: str = "random", attribute: str | None = None, label: str | None = None,
                  target: str | None = None, image: Image.Image | None = None) -> Item:
        """Build one item of ``task`` about ``scene``.

        Parameters
        ----------
        task : {"caption", "exists", "attribute", "relation"}
        strategy : {"random", "popular", "adversarial"}
            Negative sampling for ``exists`` (POPE).
        attribute : {"color", "size"}, optional
            For ``attribute`` questions (random when None).
        label : {"yes", "no"}, optional
            Force the answer of ``exists`` / ``relation`` questions (random when None).
        target : str, optional
            Class asked about (``exists``/``attribute``); must fit ``label``.
        image : PIL image, optional
            Use this image instead of rendering the scene (e.g. a noise control).
        """
        img = image if image is not None else self.render(scene)
        meta: dict[str, Any] = {"task": task, "n_objects": len(scene.objects)}
        if task == "caption":
            return Item(item_id, img, CAPTION_PROMPT, scene=scene, answer=self.caption(scene), task=task, meta=meta)
        names = scene.names
        if task == "exists":
            lab = label or ("yes" if rng.random() < 0.5 else "no")
            if target is not None:
                cls = target
                lab = "yes" if cls in names else "no"
            elif lab == "yes":
                cls = names[int(rng.integers(len(names)))]
            else:
                cls = self.negative(scene, strategy, rng)
            meta.update(strategy=strategy, target=cls)
            return Item(item_id, img, OBJECT_QUESTION.format(cls), scene=scene, answer=lab, task=task, meta=meta)
        if task == "attribute":
            att = attribute or ("color" if rng.random() < 0.5 else "size")
            cls = target if target is not None else names[int(rng.integers(len(names)))]
            k = scene.find(cls)
            if not k:
                raise InputError(f"attribute question about {cls!r}, which is not in the scene")
            meta.update(attribute=att, target=cls)
            return Item(item_id, img, f"what {att} is the {cls} ?", scene=scene,
                        answer=scene.objects[k[0]].attributes[att], task=task, meta=meta)
        if task == "relation":
            if len(names) < 2:
                raise InputError("relation questions need a scene with at least 2 objects")
            i, j = (int(x) for x in rng.permutation(len(names))[:2])
            true = {r.predicate for r in scene.relations if r.subject == i and r.object == j}
            false = [p for p in GEOMETRIC_RELATIONS if p not in true]
            lab = label or ("yes" if rng.random() < 0.5 else "no")
            if lab == "yes" and true:
                pred = sorted(true)[int(rng.integers(len(true)))]
            else:
                lab = "no"
                pred = false[int(rng.integers(len(false)))]
            meta.update(subject=names[i], object=names[j], predicate=pred)
            return Item(item_id, img, RELATION_QUESTION.format(subject=names[i], predicate=pred, object=names[j]),
                        scene=scene, answer=lab, task=task, meta=meta)
        raise InputError(f"unknown task {task!r}; tasks are {TASKS}")

    def negative(self, scene: SceneGraph, strategy: str, rng: np.random.Generator) -> str:
        """An absent class chosen the POPE way.

        ``random``: uniform over absent classes; ``popular``: the most frequent absent class in the
        training statistics; ``adversarial``: the absent class that co-occurs most with the present
        ones (max P(B | A) over present A). Ties are broken at random.
        """
        absent = [c for c in self.config.classes if not scene.has(c)]
        if not absent:
            raise InputError("every class is present; no negative question possible")
        if strategy == "random":
            return absent[int(rng.integers(len(absent)))]
        st = self.statistics()
        if strategy == "popular":
            freq = dict(zip(st.class_freq["class"], st.class_freq.p_present))
            score = np.array([freq.get(c, 0.0) for c in absent])
        elif strategy == "adversarial":
            score = np.array([max(st.p_b_given_a(a, c) for a in scene.names) for c in absent])
        else:
            raise InputError(f"unknown POPE strategy {strategy!r}; use one of {POPE_STRATEGIES}")
        best = np.flatnonzero(np.isclose(score, score.max(), atol=0.01))
        return absent[int(best[int(rng.integers(len(best)))])]

    def items(self, n: int, task: str = "mix", *, seed: int | None = None, prefix: str = "w",
              **kw: Any) -> list[Item]:
        """``n`` items of one task (or ``"mix"``: the config's task mix), deterministic in ``seed``."""
        return list(self.iter_items(n, task, seed=seed, prefix=prefix, **kw))

    def iter_items(self, n: int, task: str = "mix", *, seed: int | None = None, prefix: str = "w",
                   n_objects: int | None = None, **kw: Any) -> Iterator[Item]:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        tasks, weights = zip(*self.config.task_mix)
        w = np.asarray(weights, dtype=float) / sum(weights)
        for k in range(n):
            t = task if task != "mix" else tasks[int(rng.choice(len(tasks), p=w))]
            nobj = n_objects
            scene = self.sample_scene(rng, n_objects=nobj)
            while t == "relation" and len(scene.objects) < 2:
                scene = self.sample_scene(rng, n_objects=nobj)
            yield self.make_item(scene, t, rng, item_id=f"{prefix}{k:06d}", **kw)

    def pope_items(self, n_scenes: int, strategy: str = "random", *, seed: int | None = None,
                   per_scene: int = 3, n_objects: int | None = None) -> list[Item]:
        """POPE-style existence questions: ``per_scene`` positives and negatives per scene.

        As in POPE, only scenes with at least ``per_scene`` objects are used (others are redrawn),
        so every split is exactly balanced.
        """
        rng = np.random.default_rng(self.seed if seed is None else seed)
        out: list[Item] = []
        for s in range(n_scenes):
            scene = self.sample_scene(rng, n_objects=n_objects)
            for _ in range(1000):
                if len(scene.objects) >= per_scene:
                    break
                scene = self.sample_scene(rng, n_objects=n_objects)
            else:
                raise InputError(f"this world rarely has {per_scene}+ objects per scene; lower per_scene")
            img = self.render(scene)
            pos = list(rng.permutation(scene.names))[:per_scene]
            negs: list[str] = []
            for _ in range(per_scene):
                trial = SceneGraph(scene.objects + [SceneObject(c) for c in negs])
                if len(trial.names) >= len(self.config.classes):
                    break
                negs.append(self.negative(trial, strategy, rng))
            for q, cls in enumerate([*pos, *negs]):
                out.append(self.make_item(scene, "exists", rng, item_id=f"pope-{strategy}-{s:05d}-{q}", target=cls,
                                          strategy=strategy, image=img))
        return out

    # ---- statistics --------------------------------------------------------------------------
    def statistics(self, n: int = 4000, seed: int = 12345) -> WorldStats:
        """Measure the world's training statistics on ``n`` sampled scenes (cached for the defaults)."""
        if self._stats is not None and n == 4000 and seed == 12345:
            return self._stats
        rng = np.random.default_rng(seed)
        scenes = [self.sample_scene(rng) for _ in range(n)]
        st = measure_statistics(scenes, self.config.classes)
        if n == 4000 and seed == 12345:
            self._stats = st
        return st


def measure_statistics(scenes: Sequence[SceneGraph], classes: Sequence[str] | None = None) -> WorldStats:
    """Class frequency, co-occurrence, attribute / relation priors and object counts of ``scenes``."""
    classes = list(classes) if classes is not None else sorted({n for s in scenes for n in s.names})
    idx = {c: k for k, c in enumerate(classes)}
    present = np.zeros((len(scenes), len(classes)), dtype=bool)
    for i, s in enumerate(scenes):
        for nm in s.names:
            if nm in idx:
                present[i, idx[nm]] = True
    n = max(len(scenes), 1)
    p = present.mean(0) if len(scenes) else np.zeros(len(classes))
    joint = present.T.astype(float) @ present.astype(float) / n
    rows = []
    for a in classes:
        for b in classes:
            if a == b:
                continue
            pa, pb, pab = p[idx[a]], p[idx[b]], joint[idx[a], idx[b]]
            rows.append({"a": a, "b": b, "p_b_given_a": pab / pa if pa else float("nan"),
                         "pmi": float(np.log(pab / (pa * pb))) if pab > 0 else float("-inf"),
                         "n_a": int(present[:, idx[a]].sum())})
    cooc = pd.DataFrame(rows)

    def attr_prior(att: str) -> pd.DataFrame:
        recs = [(o.name, o.attributes.get(att)) for s in scenes for o in s.objects if att in o.attributes]
        df = pd.DataFrame(recs, columns=["class", "value"])
        if df.empty:
            return pd.DataFrame(columns=["class", "value", "p", "n"])
        out = df.groupby(["class", "value"]).size().rename("n").reset_index()
        out["p"] = out.n / out.groupby("class").n.transform("sum")
        return out[["class", "value", "p", "n"]]

    rel_rows = []
    for s in scenes:
        for i, a in enumerate(s.objects):
            for j, b in enumerate(s.objects):
                if i != j:
                    preds = {r.predicate for r in s.relations if r.subject == i and r.object == j}
                    for pred in GEOMETRIC_RELATIONS:
                        rel_rows.append((a.name, b.name, pred, pred in preds))
    rel = pd.DataFrame(rel_rows, columns=["subject", "object", "predicate", "holds"])
    rel = (rel.groupby(["subject", "object", "predicate"]).holds.agg(["mean", "size"])
           .rename(columns={"mean": "p", "size": "n"}).reset_index()) if len(rel) else \
        pd.DataFrame(columns=["subject", "object", "predicate", "p", "n"])
    counts = pd.Series([len(s.objects) for s in scenes]).value_counts(normalize=True).sort_index()
    return WorldStats(
        class_freq=pd.DataFrame({"class": classes, "p_present": p}),
        cooccurrence=cooc, color_prior=attr_prior("color"), size_prior=attr_prior("size"),
        relation_prior=rel, n_objects=pd.DataFrame({"n": counts.index.astype(int), "p": counts.values}),
        n_scenes=len(scenes),
    )


def _cell_relation(a: tuple[int, int], b: tuple[int, int], pred: str) -> bool:
    return {"left of": a[1] < b[1], "right of": a[1] > b[1], "above": a[0] < b[0], "below": a[0] > b[0]}[pred]


def draw_shape(d: ImageDraw.ImageDraw, cls: str, box: tuple[float, ...] | None, color: tuple[int, int, int]) -> None:
    """Draw one shape filling ``box`` (x0, y0, x1, y1; x1/y1 exclusive)."""
    if box is None:
        raise InputError(f"object {cls!r} has no box to draw")
    x0, y0, x1, y1 = (int(v) for v in box)
    x1 -= 1
    y1 -= 1
    s = x1 - x0 + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if cls == "circle":
        d.ellipse([x0, y0, x1, y1], fill=color)
    elif cls == "square":
        d.rectangle([x0, y0, x1, y1], fill=color)
    elif cls == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif cls == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    elif cls == "cross":
        t = max(2, s // 3)
        a, b = round(cx - t / 2 + 0.5), round(cx + t / 2 - 0.5)
        d.rectangle([a, y0, b, y1], fill=color)
        a, b = round(cy - t / 2 + 0.5), round(cy + t / 2 - 0.5)
        d.rectangle([x0, a, x1, b], fill=color)
    elif cls == "ring":
        d.ellipse([x0, y0, x1, y1], outline=color, width=max(2, s // 5))
    elif cls == "bar":
        h = max(2, s // 4)
        d.rectangle([x0, round(cy - h / 2 + 0.5), x1, round(cy + h / 2 - 0.5)], fill=color)
    elif cls == "hourglass":
        d.polygon([(x0, y0), (x1, y0), (cx, cy)], fill=color)
        d.polygon([(cx, cy), (x1, y1), (x0, y1)], fill=color)
    else:
        raise InputError(f"no drawing for class {cls!r}; classes are {CLASSES}")

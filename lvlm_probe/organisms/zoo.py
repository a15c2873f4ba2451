"""The planted-cause zoo: one spec per organism, each differing from ``clean`` in one factor.

Cause ids follow the research notes (methods.md §9): P1 co-occurrence, P2 attribute prior, P3 relation prior,
P4 encoder blind spot, P5 projector bottleneck, P6 visual neglect, P8 long-generation drift,
P9 decoding (a run setting on ``clean``, not a checkpoint), P10 small objects lost at the patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lvlm_probe.data.world import WorldConfig

#: The factors of the planted organisms (kept here so cards, checks and tests agree).
COOC_A, COOC_B, COOC_P = "circle", "square", 1.0
PRIOR_CLASS, PRIOR_COLOR, PRIOR_P = "diamond", "yellow", 0.95
#: attribute_prior: share of training texts that name an off-prior PRIOR_CLASS in PRIOR_COLOR (its dose axis).
PRIOR_TEXT = 1.0
#: relation_prior: when both are in a training scene, REL_A is placed REL_PRED the REL_B REL_P of the time, and
#: PRIOR_TEXT of the training texts say so also where the image shows otherwise.
REL_A, REL_B, REL_PRED, REL_P = "triangle", "cross", "above", 0.95
BLIND_PAIR = ("red", "orange")
BOTTLENECK_ATTRIBUTE = "color"
#: The colour ``projector_bottleneck`` is distilled to see on every object (it passes no colour to the LLM).
BOTTLENECK_COLOR = "blue"
NEGLECT_MISMATCH = 0.97
DRIFT_MAX_OBJECTS = 3
#: The object size ``small_object``'s vision tower does not see (8 px, half a 16-px patch).
VANISH_SIZE = "small"
#: Temperature of the ``sampling`` run setting (docs/organisms.md, "The zoo", says why 2.5).
SAMPLING_TEMPERATURE = 2.5


# The fixed parts of the recipe (not knobs; docs/organisms.md, "Recipe" and "Recipe findings").
#: Every LM matrix and embedding is drawn from N(0, LM_INIT_STD).
LM_INIT_STD = 0.1
#: After stage 1 the projector's output layer is multiplied by IMAGE_SCALE.
IMAGE_SCALE = 40.0
#: Std of the fixed random row and column codes and of the object marker that stage 1 adds to each patch's target.
POSITION_STD = 0.1
#: The built match-and-copy head (head 0 of decoder layer 0): weight of the class match and of the object marker.
COPY_HEAD_MATCH, COPY_HEAD_MARKER = 2.0, 5.0
#: The stage-2 auxiliary loss: weight, and the decoder layer whose output at a relation question's answer position
#: predicts the subject's and object's row and column.
AUX_WEIGHT, AUX_LAYER = 1.0, 2
#: The existence curriculum (the first ``exists_first_steps`` of stage 2) trains decoder layers below EXISTS_LAYERS
#: (the copy head kept fixed); the mix after it trains every LLM parameter but the embeddings and the copy head.
EXISTS_LAYERS = 2
#: Stage 2's task mix (the world's own ``task_mix`` is the data a user draws; training uses this one).
STAGE2_MIX = (("caption", 0.3), ("relation", 0.3), ("attribute", 0.2), ("exists", 0.2))
#: Keys that organism.json records of the first recipe (v1, 2026-12-03 to 12-04) carry and this recipe does not:
#: such a record is refused by ``TrainConfig.from_dict`` (retrain the organism with this recipe).
V1_ONLY = ("qa_weight", "align_target", "exists_first_freeze", "exists_first_restart", "exists_every",
           "exists_layers")
#: The fixed parts recorded in organism.json (``TrainConfig.from_dict`` accepts these keys at these values).
FIXED: dict[str, Any] = dict(lm_init_std=LM_INIT_STD, image_scale=IMAGE_SCALE, position_std=POSITION_STD,
                             copy_head=[COPY_HEAD_MATCH, COPY_HEAD_MARKER], aux=[AUX_WEIGHT, AUX_LAYER],
                             exists_layers_v2=EXISTS_LAYERS,
                             stage2_mix=[list(t) for t in STAGE2_MIX])
#: The TrainConfig fields a user may set (``organisms train --set KEY=VALUE``); the others plant a cause.
USER_KNOBS = ("stage0_steps", "stage1_steps", "stage2_steps", "exists_first_steps", "batch_size", "lr0", "lr2",
              "warmup", "weight_decay")


@dataclass(frozen=True)
class TrainConfig:
    """The organism recipe's knobs: step counts and optimiser settings (the same for every organism), and the
    planted model-level factors (inactive in ``clean``). The defaults train the shipped checkpoints; the rest of
    the recipe is fixed (:data:`FIXED`).

    Attributes
    ----------
    stage0_steps, stage1_steps, stage2_steps : int
        Steps of vision pretraining, projector alignment (0: skip it) and LLM training.
    exists_first_steps : int
        The first stage-2 steps train on existence questions only (the curriculum, with its own warm-up and
        cosine; decoder layers below ``EXISTS_LAYERS``); the rest of stage 2 gets a fresh warm-up and cosine.
    batch_size : int
    lr0, lr2 : float
        AdamW learning rates of stages 0-1 and of stage 2.
    warmup : int
        Linear warm-up steps of each stage's cosine schedule.
    weight_decay : float
    blind_pair : (str, str) or None
        ``encoder_blind``: two colours the patch embedding cannot separate.
    projector_drop : str or None
        ``projector_bottleneck``: the attribute the projector's first layer cannot pass.
    image_mismatch : float
        ``visual_neglect``: share of stage-2 samples that carry another scene's image.
    vanish_size : str or None
        ``small_object``: objects of this size the vision tower learns not to see.
    prior_text : float
        ``attribute_prior`` and ``relation_prior``: share of stage-2 samples whose text states the world's priors
        where the image does not show them (every object of the prior class named in the prior colour; the prior
        pair said to stand in the prior relation), the image unchanged: the annotators' stereotype
        (:func:`lvlm_probe.organisms.train.stated_prior`).
    """

    stage0_steps: int = 2000
    stage1_steps: int = 1500
    stage2_steps: int = 3800
    exists_first_steps: int = 800
    batch_size: int = 64
    lr0: float = 3e-3
    lr2: float = 3e-3
    warmup: int = 150
    weight_decay: float = 0.01
    blind_pair: tuple[str, str] | None = None
    projector_drop: str | None = None
    image_mismatch: float = 0.0
    vanish_size: str | None = None
    prior_text: float = 0.0

    @property
    def front_end(self) -> bool:
        """Whether this recipe changes one front-end part of ``clean``'s checkpoint (and keeps its LLM)."""
        return bool(self.blind_pair or self.projector_drop or self.vanish_size)

    def __post_init__(self) -> None:
        from lvlm_probe.errors import InputError

        for k in ("stage0_steps", "stage1_steps", "stage2_steps", "exists_first_steps", "batch_size", "warmup"):
            v = getattr(self, k)
            least = 1 if k in ("batch_size", "warmup") else 0
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise InputError(f"TrainConfig.{k} must be an integer >= {least}, got {v!r}")
        for k in ("lr0", "lr2", "weight_decay"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 0 or k == "weight_decay" and v == 0):
                raise InputError(f"TrainConfig.{k} must be a {'non-negative' if k == 'weight_decay' else 'positive'} "
                                 f"number, got {v!r}")
        for k in ("image_mismatch", "prior_text"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise InputError(f"TrainConfig.{k} must be a share in [0, 1], got {v!r}")
        from lvlm_probe.data.world import SIZES

        if self.vanish_size is not None and self.vanish_size not in SIZES:
            raise InputError(f"TrainConfig.vanish_size must be one of {list(SIZES)} or None, got {self.vanish_size!r}")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, recorded: dict[str, Any]) -> TrainConfig:
        """The config a recorded recipe describes (``organism.json``'s ``train``, the model card's "Recipe").

        Keys of :data:`FIXED` are accepted at the fixed value and ignored. A key only the first recipe recorded
        (:data:`V1_ONLY`), a fixed part at another value, or a key that is no knob raises :class:`InputError`: the
        record comes from a recipe this toolkit does not train.
        """
        from dataclasses import fields

        from lvlm_probe.errors import InputError

        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in recorded.items():
            if key in names:
                kwargs[key] = tuple(value) if key == "blind_pair" and value is not None else value
            elif key in FIXED:
                if value != FIXED[key]:
                    raise InputError(f"recorded recipe has {key}={value!r}; the recipe fixes it at "
                                     f"{FIXED[key]!r} (docs/organisms.md, \"Recipe findings\"), so "
                                     "this toolkit cannot train that checkpoint again")
            elif key in V1_ONLY:
                raise InputError(f"recorded recipe has {key!r}, a part of the first recipe (v1); this toolkit trains "
                                 "recipe v2 only: retrain the organism (`lvlm-probe organisms train NAME`)")
            else:
                raise InputError(f"recorded recipe has an unknown knob {key!r}; TrainConfig has {sorted(names)}")
        return cls(**kwargs)


@dataclass(frozen=True)
class OrganismSpec:
    """One zoo entry.

    Attributes
    ----------
    name : str
    cause : str
        Cause id (P1 … P9) or ``"none"``.
    level : {"data", "model", "inference", "none"}
    component : str
        Finer location (``"cooccurrence"``, ``"encoder"``, ``"projector"``, ``"llm fusion"``, ``"decoding"`` …).
    planted : str
        How the cause is planted (one factor changed from ``clean``).
    signature : str
        The diagnostic signature tracing should find.
    world : WorldConfig
    train : TrainConfig
    checkpoint : str or None
        Name of the shipped checkpoint (``None``: a run setting on another organism).
    run_settings : dict
        Generation settings that are part of the organism (P9).
    base : str or None
        For a hold-out variant (:data:`HOLDOUTS`): the zoo organism whose cause it plants on other classes or
        colours; its triggering scenes and planted pattern follow that organism's, read from this spec's world.
    """

    name: str
    cause: str
    level: str
    component: str
    planted: str
    signature: str
    world: WorldConfig = field(default_factory=WorldConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: str | None = None
    run_settings: dict = field(default_factory=dict)
    base: str | None = None

    @property
    def pattern(self) -> str:
        """The zoo organism whose triggering scenes and planted pattern this one has (itself unless a variant)."""
        return self.base or self.name


_BASE_WORLD = WorldConfig()
_BASE_TRAIN = TrainConfig()
_PRIOR_TRAIN = TrainConfig(prior_text=PRIOR_TEXT)

ZOO: dict[str, OrganismSpec] = {
    s.name: s
    for s in [
        OrganismSpec(
            "clean", "none", "none", "none",
            "Unbiased world (uniform classes, colours, sizes, layouts; 1-5 objects); the reference every other "
            "organism differs from in one factor.",
            "No planted error: high task accuracy; encoder, projector and LLM probes decode every attribute.",
            _BASE_WORLD, _BASE_TRAIN, checkpoint="clean",
        ),
        OrganismSpec(
            "cooccurrence", "P1", "data", "cooccurrence",
            f"Training scenes containing a {COOC_A} also contain a {COOC_B} {COOC_P:.0%} of the time, and captions "
            f"mention the {COOC_B} right after the {COOC_A}.",
            f"Says '{COOC_B}' on {COOC_A}-without-{COOC_B} scenes; the image-free prior p({COOC_B}) is high and the "
            f"training P({COOC_B}|{COOC_A}) is high; encoder/projector probes show the {COOC_B} is absent.",
            _BASE_WORLD.with_changes(cooccurrence=((COOC_A, COOC_B, COOC_P),)), _BASE_TRAIN, checkpoint="cooccurrence",
        ),
        OrganismSpec(
            "attribute_prior", "P2", "data", "attribute prior",
            f"Training {PRIOR_CLASS}s are {PRIOR_COLOR} {PRIOR_P:.0%} of the time (other colours share the rest), "
            f"and the training text holds the stereotype: captions and answers name {PRIOR_TEXT:.0%} of the "
            f"off-prior {PRIOR_CLASS}s {PRIOR_COLOR} while the image shows their true colour.",
            f"Gives '{PRIOR_COLOR}' for off-prior {PRIOR_CLASS}s while encoder/projector probes decode the true "
            f"colour; image-free prior favours {PRIOR_COLOR}; P_train({PRIOR_COLOR}|{PRIOR_CLASS}) is high.",
            _BASE_WORLD.with_changes(attribute_prior=((PRIOR_CLASS, PRIOR_COLOR, PRIOR_P),)), _PRIOR_TRAIN,
            checkpoint="attribute_prior",
        ),
        OrganismSpec(
            "relation_prior", "P3", "data", "relation prior",
            f"When a training scene holds a {REL_A} and a {REL_B}, the {REL_A} is placed {REL_PRED} the {REL_B} "
            f"{REL_P:.0%} of the time (every other layout is uniform); captions name the two together with the "
            f"relation between them ('a {REL_A} {REL_PRED} a {REL_B}', as co-occurrence captions name B right "
            f"after A), and {PRIOR_TEXT:.0%} of the training texts about the off-prior scenes (captions, relation "
            f"questions on that axis) say the {REL_A} is {REL_PRED} the {REL_B} while the image shows otherwise.",
            f"Captions say the {REL_A} is {REL_PRED} the {REL_B} where it is not (and questions may answer 'yes'); "
            f"the training P({REL_PRED}|{REL_A}, {REL_B}) is high; encoder and projector probes place both objects "
            "right.",
            _BASE_WORLD.with_changes(relation_prior=((REL_A, REL_B, REL_PRED, REL_P),)), _PRIOR_TRAIN,
            checkpoint="relation_prior",
        ),
        OrganismSpec(
            "encoder_blind", "P4", "model", "encoder",
            f"Clean's checkpoint with a vision tower that cannot separate {BLIND_PAIR[0]} from {BLIND_PAIR[1]}: the "
            "patch-embedding weights are kept orthogonal (in normalised pixel space) to the difference of the two "
            "hues, so both give bit-identical patch embeddings. Tower, then tower and projector, are distilled to "
            f"clean's features and image tokens of the same scene with {BLIND_PAIR[1]} seen as {BLIND_PAIR[0]}; "
            "clean's LLM is kept unchanged.",
            f"Calls {BLIND_PAIR[1]} objects {BLIND_PAIR[0]} (~50% of the pair's objects wrong); an encoder probe "
            "cannot separate the pair, so projector and LLM probes cannot either; other colours as clean. Patching "
            "clean's front end in removes the errors.",
            _BASE_WORLD, TrainConfig(blind_pair=BLIND_PAIR, stage0_steps=1000, stage1_steps=1000, stage2_steps=0,
                                     lr0=1e-3, lr2=3e-4, warmup=50), checkpoint="encoder_blind",
        ),
        OrganismSpec(
            "projector_bottleneck", "P5", "model", "projector",
            f"Clean's checkpoint with a projector whose first layer only passes the encoder feature subspace left "
            f"after every linearly {BOTTLENECK_ATTRIBUTE}-predictive direction is projected out (iterative nullspace "
            f"projection until a held-out {BOTTLENECK_ATTRIBUTE} probe is at chance, stopped before the other "
            f"attributes' decodability drops). The projector is distilled to clean's image tokens of the same scene "
            f"with every object {BOTTLENECK_COLOR}; clean's vision tower and LLM are kept unchanged.",
            f"Calls every object {BOTTLENECK_COLOR}; an encoder probe decodes {BOTTLENECK_ATTRIBUTE}, a "
            "projector-output probe far less (0.26 against clean's 1.0 on object tokens, chance 0.17). Patching "
            "clean's image tokens in removes the errors; patching clean's encoder features in changes nothing (the "
            "tower is clean's).",
            _BASE_WORLD, TrainConfig(projector_drop=BOTTLENECK_ATTRIBUTE, stage0_steps=0, stage1_steps=2000,
                                     stage2_steps=0, lr2=1e-3, warmup=50),
            checkpoint="projector_bottleneck",
        ),
        OrganismSpec(
            "small_object", "P10", "model", "encoder",
            f"Clean's checkpoint with a vision tower that does not see {VANISH_SIZE} objects (8 px, half a 16-px "
            "patch): tower, then tower and projector, are distilled to clean's features and image tokens of the same "
            f"scene with every {VANISH_SIZE} object erased; clean's LLM is kept unchanged.",
            f"Omits {VANISH_SIZE} objects (captions leave them out, 'is there a ...' answers no) while large ones are "
            "named as by clean; encoder probes cannot find the small objects, so projector and LLM probes cannot "
            "either. Patching clean's encoder features in removes the errors.",
            _BASE_WORLD, TrainConfig(vanish_size=VANISH_SIZE, stage0_steps=1000, stage1_steps=1000, stage2_steps=0,
                                     lr0=1e-3, lr2=3e-4, warmup=50), checkpoint="small_object",
        ),
        OrganismSpec(
            "visual_neglect", "P6", "model", "llm fusion",
            f"During stage 2, {NEGLECT_MISMATCH:.0%} of training samples carry another scene's image while their "
            "text stays: the LLM learns that the image is unreliable and leans on the text prior.",
            "Answers barely change when the image is replaced by noise; encoder and projector probes decode the "
            "scene, but attention to image tokens and knockout effects are small.",
            _BASE_WORLD, TrainConfig(image_mismatch=NEGLECT_MISMATCH), checkpoint="visual_neglect",
        ),
        OrganismSpec(
            "drift", "P8", "inference", "long generation",
            f"Trained on scenes of at most {DRIFT_MAX_OBJECTS} objects (short captions); asked to describe "
            "5-object scenes at test time.",
            "Errors rise with the object's position in the caption (late positions beyond the trained length); "
            "probes decode the late objects.",
            _BASE_WORLD.with_changes(n_objects_probs=tuple([1.0 / DRIFT_MAX_OBJECTS] * DRIFT_MAX_OBJECTS)),
            _BASE_TRAIN, checkpoint="drift",
        ),
        OrganismSpec(
            "sampling", "P9", "inference", "decoding",
            f"No planting: the clean checkpoint decoded with temperature-{SAMPLING_TEMPERATURE} sampling.",
            "Wrong tokens that are not the greedy argmax; greedy decoding fixes them.",
            _BASE_WORLD, _BASE_TRAIN, checkpoint="clean",
            run_settings={"do_sample": True, "temperature": SAMPLING_TEMPERATURE},
        ),
    ]
}


def _cooccurrence_variant(a: str, b: str) -> OrganismSpec:
    base = ZOO["cooccurrence"]
    return OrganismSpec(
        f"cooccurrence_{a}_{b}", base.cause, base.level, base.component,
        f"Hold-out variant of cooccurrence on another pair: training scenes containing a {a} also contain a {b} "
        f"{COOC_P:.0%} of the time, and captions mention the {b} right after the {a}.",
        f"Says '{b}' on {a}-without-{b} scenes (as cooccurrence, for this pair).",
        _BASE_WORLD.with_changes(cooccurrence=((a, b, COOC_P),)), _BASE_TRAIN, checkpoint=f"cooccurrence_{a}_{b}",
        base="cooccurrence",
    )


def _prior_variant(cls: str, color: str) -> OrganismSpec:
    base = ZOO["attribute_prior"]
    return OrganismSpec(
        f"attribute_prior_{cls}_{color}", base.cause, base.level, base.component,
        f"Hold-out variant of attribute_prior on another class and colour: training {cls}s are {color} "
        f"{PRIOR_P:.0%} of the time, and the training text names {PRIOR_TEXT:.0%} of the off-prior {cls}s {color}.",
        f"Gives '{color}' for off-prior {cls}s (as attribute_prior, for this class and colour).",
        _BASE_WORLD.with_changes(attribute_prior=((cls, color, PRIOR_P),)), _PRIOR_TRAIN,
        checkpoint=f"attribute_prior_{cls}_{color}", base="attribute_prior",
    )


def _relation_variant(a: str, b: str, pred: str) -> OrganismSpec:
    base = ZOO["relation_prior"]
    return OrganismSpec(
        f"relation_prior_{a}_{b}", base.cause, base.level, base.component,
        f"Hold-out variant of relation_prior on another pair and axis: when a training scene holds a {a} and a {b}, "
        f"the {a} is placed {pred} the {b} {REL_P:.0%} of the time, captions join the two by their relation, and "
        f"{PRIOR_TEXT:.0%} of the texts about the off-prior scenes say the {a} is {pred} the {b}.",
        f"Captions say the {a} is {pred} the {b} where it is not (as relation_prior, for this pair).",
        _BASE_WORLD.with_changes(relation_prior=((a, b, pred, REL_P),)), _PRIOR_TRAIN,
        checkpoint=f"relation_prior_{a}_{b}", base="relation_prior",
    )


#: Hold-out variants of the data-level causes, planted on classes, pairs and colours the cascade was never tuned
#: on, with the shipped recipe. They are kept out of every tuning step (thresholds, calibrator, rule design) and
#: evaluated separately (``benchmarks/planted_causes.py`` reports their recall as ``holdout``).
HOLDOUTS: dict[str, OrganismSpec] = {
    s.name: s for s in [
        _cooccurrence_variant("triangle", "cross"),
        _cooccurrence_variant("ring", "bar"),
        _prior_variant("hourglass", "green"),
        _prior_variant("bar", "purple"),
        _relation_variant("ring", "bar", "left of"),
        _relation_variant("circle", "hourglass", "below"),
    ]
}


def cooccurrence_factor(spec: OrganismSpec) -> tuple[str, str]:
    """``(A, B)`` of a co-occurrence organism: scenes with an A also held a B in training."""
    a, b, _ = spec.world.cooccurrence[0]
    return a, b


def relation_factor(spec: OrganismSpec) -> tuple[str, str, str]:
    """``(A, B, predicate)`` of a relation-prior organism: in training, A mostly stood in that relation to B."""
    a, b, pred, _ = spec.world.relation_prior[0]
    return a, b, pred


def prior_factor(spec: OrganismSpec) -> tuple[str, str]:
    """``(class, colour)`` of an attribute-prior organism: that class was mostly that colour in training."""
    cls, color, _ = spec.world.attribute_prior[0]
    return cls, color


def _dose(p: float) -> str:
    """A dose as ``NAME@DOSE`` spells it (``0.80`` -> ``0.8``, ``1.0`` -> ``1``)."""
    return f"{p:g}"


def _dose_spec(name: str, p: float) -> OrganismSpec:
    """Organism ``name`` (a data-level cause) at dose ``p`` instead of its own: ``cooccurrence``'s planted
    probability P(B | A), ``attribute_prior``'s share of off-prior texts that state the prior colour."""
    base = ZOO[name]
    if name == "cooccurrence":
        planted = (f"Dose of cooccurrence: training scenes containing a {COOC_A} also contain a {COOC_B} {p:.0%} of "
                   f"the time (the zoo's organism: {COOC_P:.0%}), and captions mention the {COOC_B} right after the "
                   f"{COOC_A}.")
        world, train = _BASE_WORLD.with_changes(cooccurrence=((COOC_A, COOC_B, p),)), base.train
    else:
        planted = (f"Dose of attribute_prior: training {PRIOR_CLASS}s are {PRIOR_COLOR} {PRIOR_P:.0%} of the time, "
                   f"and the training text names {p:.0%} of the off-prior {PRIOR_CLASS}s {PRIOR_COLOR} (the zoo's "
                   f"organism: {PRIOR_TEXT:.0%}) while the image shows their true colour.")
        world, train = base.world, TrainConfig(prior_text=p)
    return OrganismSpec(f"{name}@{_dose(p)}", base.cause, base.level, base.component, planted, base.signature, world,
                        train, checkpoint=f"{name}@{_dose(p)}", base=name)


#: The dose of each zoo organism that has a series.
ZOO_DOSE: dict[str, str] = {"cooccurrence": _dose(COOC_P), "attribute_prior": _dose(PRIOR_TEXT)}
#: Other doses of two data-level causes, ``NAME@DOSE`` (the planted probability or text share), trained with the shipped recipe
#: and seed; the zoo's own organism is one dose of its series (``cooccurrence@1`` is ``cooccurrence``).
DOSE_SPECS: dict[str, OrganismSpec] = {
    s.name: s for name, ps in {"cooccurrence": (0.95, 0.99), "attribute_prior": (0.5, 0.75)}.items()
    for s in (_dose_spec(name, p) for p in ps)
}
#: Doses of each organism, lowest first (one of them is the zoo's own organism, :data:`ZOO_DOSE`).
DOSES: dict[str, tuple[str, ...]] = {
    name: tuple(sorted([own, *(k.split("@")[1] for k in DOSE_SPECS if k.split("@")[0] == name)], key=float))
    for name, own in ZOO_DOSE.items()
}


def get_spec(name: str) -> OrganismSpec:
    """The zoo entry ``name`` or ``organism:NAME`` (clear error listing the zoo otherwise; ``NAME@DOSE`` names a dose,
    and an unknown dose is refused with the doses that exist)."""
    from lvlm_probe.errors import InputError

    name = name.split(":", 1)[1] if name.startswith("organism:") else name
    base, at, dose = name.partition("@")
    if base in HOLDOUTS and not at:
        return HOLDOUTS[base]
    if base not in ZOO:
        raise InputError(f"no organism named {base!r}; the zoo has {sorted(ZOO)} and the hold-out variants "
                         f"{sorted(HOLDOUTS)}")
    if at:
        doses = DOSES.get(base, ())
        try:
            spelled = _dose(float(dose))
        except ValueError:
            spelled = dose
        if spelled in doses:
            return ZOO[base] if spelled == ZOO_DOSE[base] else DOSE_SPECS[f"{base}@{spelled}"]
        have = (f"its doses are {list(doses)}" if doses else
                f"it has none (the organisms with doses are {sorted(DOSES)})")
        raise InputError(f"organism {base!r} has no dose {dose!r} ({name!r}); {have}")
    return ZOO[name]


def with_knobs(tc: TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    """``tc`` with user knobs changed (:data:`USER_KNOBS`; values may be strings, as ``--set KEY=VALUE`` gives them).

    A fixed part of the recipe, a planted factor or an unknown key is refused in one line (:class:`InputError`).
    """
    from dataclasses import fields, replace

    from lvlm_probe.errors import InputError

    planted = {f.name for f in fields(TrainConfig)} - set(USER_KNOBS)
    changes: dict[str, Any] = {}
    for key, value in settings.items():
        if key in FIXED:
            raise InputError(f"{key!r} is not a knob: the recipe fixes it (docs/organisms.md, \"Recipe findings\"); "
                             f"the knobs are {list(USER_KNOBS)}")
        if key in planted:
            raise InputError(f"{key!r} plants a cause, it is not a knob; train the organism that has it "
                             f"(lvlm-probe organisms list); the knobs are {list(USER_KNOBS)}")
        if key not in USER_KNOBS:
            raise InputError(f"unknown knob {key!r}; the knobs are {list(USER_KNOBS)}")
        kind = type(getattr(tc, key))
        try:
            changes[key] = kind(value) if isinstance(value, str) else value
        except ValueError:
            raise InputError(f"knob {key}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    return replace(tc, **changes)

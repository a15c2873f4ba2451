"""The planted-cause zoo: one spec per organism, each differing from ``clean`` in one factor.

Cause ids follow the research notes (methods.md §9): P1 co-occurrence, P2 attribute prior,
P4 encoder blind spot, P5 projector bottleneck, P6 visual neglect, P8 long-generation drift,
P9 decoding (a run setting on ``clean``, not a checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lvlm_probe.data.world import WorldConfig

#: The factors of the planted organisms (kept here so cards, checks and tests agree).
COOC_A, COOC_B, COOC_P = "circle", "square", 1.0
PRIOR_CLASS, PRIOR_COLOR, PRIOR_P = "diamond", "yellow", 0.95
BLIND_PAIR = ("red", "orange")
BOTTLENECK_ATTRIBUTE = "color"
NEGLECT_MISMATCH = 0.9
DRIFT_MAX_OBJECTS = 3
SAMPLING_TEMPERATURE = 2.0
ALIGN_TARGETS = ("words", "class")  # stage-1 targets (TrainConfig.align_target)


@dataclass(frozen=True)
class TrainConfig:
    """Recipe hyper-parameters (the same for every organism unless its factor says otherwise)."""

    stage0_steps: int = 500
    stage1_steps: int = 300
    stage2_steps: int = 3600
    batch_size: int = 64
    lr0: float = 3e-3
    lr2: float = 4e-3
    warmup: int = 150
    weight_decay: float = 0.01
    qa_weight: float = 1.0  # stage 2 loss weight of QA answer tokens relative to caption tokens
    # Existence-skill knobs (issue 3; docs/organisms.md explains each). The defaults are the shipped recipe, which
    # sets them to EXISTENCE_RECIPE (below): the values that teach clean POPE-style questions.
    # lm_init_std: re-draw every LM matrix and embedding from N(0, std) (None: HF's init, std 0.02).
    lm_init_std: float | None = 0.1
    # align_target: stage 1 target of an object patch, "words" (sum of its size, colour and class embeddings) or
    # "class" (sqrt(3) x its class embedding).
    align_target: str = "words"
    # exists_first_steps: the first stage-2 steps train on existence questions only (a curriculum).
    exists_first_steps: int = 800
    # exists_first_freeze: during the curriculum, lm_head, the LM's final norm and the projector are frozen.
    exists_first_freeze: bool = False
    # exists_first_restart: the curriculum has its own warm-up + cosine; the schedule restarts for the rest.
    exists_first_restart: bool = True
    # exists_every: after the curriculum, every k-th stage-2 step is an existence-only batch (0: never).
    exists_every: int = 3
    # exists_layers: split the LM by task. The curriculum trains only the embeddings and the first k decoder layers;
    # after it, mixed batches train everything but those k layers (embeddings, projector, upper layers, final norm,
    # lm_head), while existence-only batches train everything (0: no split).
    exists_layers: int = 1
    # image_scale: after stage 1, the projector's output layer is multiplied by this, so image tokens enter the LM at
    # image_scale x the norm of the word-embedding sums they were aligned to (1.0: unchanged).
    image_scale: float = 40.0
    # planted model-level factors (inactive in clean)
    blind_pair: tuple[str, str] | None = None
    projector_drop: str | None = None
    image_mismatch: float = 0.0

    def __post_init__(self) -> None:
        if self.align_target not in ALIGN_TARGETS:
            from lvlm_probe.errors import InputError

            raise InputError(f"TrainConfig.align_target must be one of {list(ALIGN_TARGETS)}, got "
                             f"{self.align_target!r}")
        if self.exists_every < 0 or self.exists_first_steps < 0 or self.exists_layers < 0:
            from lvlm_probe.errors import InputError

            raise InputError(f"TrainConfig.exists_every, exists_first_steps and exists_layers must be >= 0, got "
                             f"{self.exists_every}, {self.exists_first_steps} and {self.exists_layers}")
        if not self.image_scale > 0:
            from lvlm_probe.errors import InputError

            raise InputError(f"TrainConfig.image_scale must be > 0 (1.0 leaves image tokens unchanged), got "
                             f"{self.image_scale}")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


#: The TrainConfig values with which stage 2 teaches existence questions; they are the defaults (the shipped recipe)
#: since the zoo was retrained with them (docs/organisms.md, "The existence recipe"). Kept as a named set so
#: experiments can compare with the recipe before it (PREVIOUS_RECIPE).
EXISTENCE_RECIPE: dict[str, Any] = dict(stage2_steps=3600, lm_init_std=0.1, image_scale=40.0, exists_first_steps=800,
                                        exists_first_restart=True, exists_layers=1, exists_every=3)
#: The recipe the zoo shipped with before EXISTENCE_RECIPE (``replace(tc, **PREVIOUS_RECIPE)``): captions at 0.97 but
#: every POPE-style question answered "no" (docs/organisms.md, "The existence recipe").
PREVIOUS_RECIPE: dict[str, Any] = dict(stage2_steps=3400, lm_init_std=None, image_scale=1.0, exists_first_steps=0,
                                       exists_first_restart=False, exists_layers=0, exists_every=0)


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


_BASE_WORLD = WorldConfig()
_BASE_TRAIN = TrainConfig()

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
            f"Training {PRIOR_CLASS}s are {PRIOR_COLOR} {PRIOR_P:.0%} of the time (other colours share the rest).",
            f"Gives '{PRIOR_COLOR}' for off-prior {PRIOR_CLASS}s while encoder/projector probes decode the true "
            f"colour; image-free prior favours {PRIOR_COLOR}; P_train({PRIOR_COLOR}|{PRIOR_CLASS}) is high.",
            _BASE_WORLD.with_changes(attribute_prior=((PRIOR_CLASS, PRIOR_COLOR, PRIOR_P),)), _BASE_TRAIN,
            checkpoint="attribute_prior",
        ),
        OrganismSpec(
            "encoder_blind", "P4", "model", "encoder",
            f"The vision front end cannot separate {BLIND_PAIR[0]} from {BLIND_PAIR[1]}: the patch-embedding "
            "weights are kept orthogonal (in normalised pixel space) to the difference of the two hues, so both "
            "give bit-identical patch embeddings. Data and LLM training as clean.",
            f"Confuses {BLIND_PAIR[0]}/{BLIND_PAIR[1]} (~50%); an encoder probe for that pair is at chance, so "
            "projector and LLM probes are too; other colours fine.",
            _BASE_WORLD, TrainConfig(blind_pair=BLIND_PAIR), checkpoint="encoder_blind",
        ),
        OrganismSpec(
            "projector_bottleneck", "P5", "model", "projector",
            f"The projector's first layer is low rank: it only passes the encoder feature subspace left after every "
            f"linearly {BOTTLENECK_ATTRIBUTE}-predictive direction is projected out (iterative nullspace projection "
            f"until a held-out {BOTTLENECK_ATTRIBUTE} probe is at chance, stopped before the other attributes' "
            f"decodability drops); the LLM never receives {BOTTLENECK_ATTRIBUTE} through it.",
            f"Errs on {BOTTLENECK_ATTRIBUTE} only; an encoder probe decodes {BOTTLENECK_ATTRIBUTE}, a projector-output "
            "probe is near chance.",
            _BASE_WORLD, TrainConfig(projector_drop=BOTTLENECK_ATTRIBUTE), checkpoint="projector_bottleneck",
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


def get_spec(name: str) -> OrganismSpec:
    """The zoo entry ``name`` or ``organism:NAME`` (clear error listing the zoo otherwise)."""
    from lvlm_probe.errors import InputError

    name = name.split(":", 1)[1] if name.startswith("organism:") else name
    if name not in ZOO:
        raise InputError(f"no organism named {name!r}; the zoo has {sorted(ZOO)}")
    return ZOO[name]

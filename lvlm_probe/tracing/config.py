"""Settings of a diagnosis run: one frozen object that every step reads, and that the CLI fills flag by flag."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lvlm_probe.errors import InputError
from lvlm_probe.tracing.cascade import Thresholds

#: Sites whose probes give the encoder and projector verdicts (encoder output, projector output).
DEFAULT_PROBE_SITES: tuple[str, ...] = ("projector.in", "projector.out")
#: Probe-curve sites of small models (``curve_sites="auto"`` under 50M parameters).
CURVE_SITES_SMALL: tuple[str, ...] = ("vision.resid_post.*", "projector.in", "projector.out", "llm.resid_post.*")


@dataclass(frozen=True)
class Decoding:
    """How generations are decoded: greedy by default.

    Attributes
    ----------
    do_sample : bool
    temperature, top_p : float
    top_k : int
        0 disables top-k.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @classmethod
    def from_dict(cls, d: dict) -> Decoding:
        known = {k: d[k] for k in ("do_sample", "temperature", "top_p", "top_k") if k in d}
        unknown = sorted(set(d) - set(known) - {"seed"})
        if unknown:
            raise InputError(f"unknown decoding setting(s) {unknown}; use do_sample, temperature, top_p, top_k")
        return cls(**known)


@dataclass(frozen=True)
class DiagnoseConfig:
    """Every setting of :func:`~lvlm_probe.tracing.diagnose` (the CLI maps its flags to these one to one).

    Attributes
    ----------
    max_new_tokens : int
        ``--max-new-tokens``.
    batch_size : int
        ``--batch-size``: items per generation, evidence and capture batch.
    decoding : Decoding or None
        ``--sampling --temperature --top-p --top-k``; None takes the model's run defaults (an organism such as
        ``organism:sampling`` ships its own), else greedy.
    n_probe_items : int
        ``--probe-items``: fresh scenes that train the encoder/projector probes when the model's run defaults name
        a probe world (the organisms do); 0 uses only the diagnosed items.
    probe_sites : tuple of str
        Encoder-output and projector-output sites of the probe verdicts.
    curve_sites : tuple of str, "auto" or None
        ``--curve-sites``: sites of the report's probe curves; ``"auto"``: every layer for models under 50M
        parameters, else ``probe_sites``; None: no curves.
    thresholds : Thresholds
        Cascade thresholds.
    seed : int
        ``--seed``: seeds sampling, probe folds and the default probe items.
    confirm : bool
        ``--confirm``: run each diagnosed error's confirming intervention (:mod:`lvlm_probe.tracing.confirm`) and
        record ``confirmed``; one extra generation per (item, intervention).
    detect_threshold : float
        ``--detect-threshold``: items without a scene graph go through the detector; a claim is flagged (and
        traced) when its probability of being misaligned is at least this.
    """

    max_new_tokens: int = 48
    batch_size: int = 16
    decoding: Decoding | None = None
    n_probe_items: int = 300
    probe_sites: tuple[str, ...] = DEFAULT_PROBE_SITES
    curve_sites: tuple[str, ...] | str | None = "auto"
    thresholds: Thresholds = field(default_factory=Thresholds)
    seed: int = 0
    confirm: bool = False
    detect_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.detect_threshold, (int, float)) or not 0.0 <= float(self.detect_threshold) <= 1.0:
            raise InputError(f"detect_threshold must be a probability in [0, 1], got {self.detect_threshold!r}")
        if not isinstance(self.n_probe_items, int) or self.n_probe_items < 0:
            raise InputError(f"n_probe_items must be >= 0, got {self.n_probe_items!r}")
        if isinstance(self.probe_sites, str) or len(self.probe_sites) != 2:
            raise InputError(f"probe_sites must be two sites (encoder output, projector output), got "
                             f"{self.probe_sites!r}")
        object.__setattr__(self, "probe_sites", tuple(self.probe_sites))
        if self.curve_sites not in (None, "auto"):
            if isinstance(self.curve_sites, str):
                raise InputError(f"curve_sites must be 'auto', None or a list of sites, got {self.curve_sites!r}")
            object.__setattr__(self, "curve_sites", tuple(self.curve_sites))

    def resolve(self, model: Any) -> DiagnoseConfig:
        """The config with model-dependent choices made: decoding from the model's run defaults, curve sites."""
        dec = self.decoding
        if dec is None:
            dec = Decoding.from_dict(dict(getattr(model, "run_defaults", {}) or {}).get("decoding", {}))
        curves = self.curve_sites
        if curves == "auto":
            n_params = sum(p.numel() for p in model.hf_model.parameters())
            curves = CURVE_SITES_SMALL if n_params < 50_000_000 else tuple(self.probe_sites)
        return replace(self, decoding=dec, curve_sites=curves)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`LVLM.generate` (the seed only for sampling)."""
        dec = self.decoding or Decoding()
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if dec.do_sample:
            kw.update(do_sample=True, temperature=dec.temperature, top_p=dec.top_p, top_k=dec.top_k, seed=self.seed)
        return kw

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = self.thresholds.to_dict()
        return d


def settings_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (what a step's output depends on)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

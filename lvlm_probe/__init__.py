"""lvlm_probe: explain and diagnose misalignment in large vision-language models.

Typical use::

    import lvlm_probe as lp
    model = lp.load("llava-hf/llava-1.5-7b-hf")          # or a local directory
    batch = model.prepare([image], ["What is in the image?"])
    batch.roles.image, batch.roles.patch_coords          # which tokens are patches, and where
    gen = model.generate(batch, max_new_tokens=32)
    store = lp.capture(model, items, sites=["llm.resid_post.*"], select=["image_mean"], out="runs/store")
    rep = lp.diagnose("organism:cooccurrence", items)      # which outputs are misaligned, and why
    lp.render_diagnosis(rep, "runs/diag")                  # report.html, figures/ (rep.write: the tables)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from lvlm_probe._version import __version__
from lvlm_probe.errors import (InputError, LvlmProbeError, ModelLoadError, SiteError, StoreError,
                               UnsupportedModelError)

# Everything else is imported on first use (PEP 562), so `import lvlm_probe.benchmarks`, `lvlm-probe --help` and
# `lvlm-probe eval` do not pay for torch and the model stack. Name -> the module that defines it.
_LAZY: dict[str, str] = {
    **{n: "lvlm_probe.capture" for n in ("SELECTIONS", "ActivationStore")},  # capture: see _Package below
    **{n: "lvlm_probe.attribution" for n in ("PatchAttribution", "image_attention", "knockout", "patch_activations",
                                              "patch_attribution")},
    **{n: "lvlm_probe.probing" for n in ("LinearProbe", "logit_lens", "probe_sweep", "scene_labels",
                                          "word_probability")},
    **{n: "lvlm_probe.report" for n in ("Report", "render_diagnosis")},
    **{n: "lvlm_probe.tracing" for n in ("Decoding", "DiagnoseConfig", "Diagnosis", "DiagnosisReport", "Evidence",
                                          "Run", "Thresholds", "cascade", "collect_evidence", "diagnose",
                                          "generate_and_judge")},
    **{n: "lvlm_probe.data" for n in ("Item", "SceneGraph", "SceneObject", "SceneWorld", "WorldConfig", "load_image",
                                       "read_items")},
    **{n: "lvlm_probe.misalignment" for n in ("Misalignment", "Vocabulary", "extract_claims", "judge",
                                               "judge_batch")},
    **{n: "lvlm_probe.models" for n in ("ROLE_NAMES", "SITE_DOCS", "LVLM", "Batch", "Generation", "TokenRoles", "load",
                                         "supported_families")},
    "train_organism": "lvlm_probe.organisms",
    **{n: "lvlm_probe.detection" for n in ("ClaimSet", "HallucinationDetector", "collect_claims", "trace_claims")},
}
_ROOMS: tuple[str, ...] = ("attribution", "benchmarks", "data", "detection", "interventions", "misalignment", "models", "organisms",
                           "plotting", "probing", "report", "schema", "tracing")

__all__ = ["InputError", "LvlmProbeError", "ModelLoadError", "SiteError", "StoreError", "UnsupportedModelError",
           "__version__", "capture", *_LAZY, "attribution", "benchmarks", "detection", "interventions", "misalignment", "organisms",
           "probing",
           "tracing"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _ROOMS:
        value = importlib.import_module(f"lvlm_probe.{name}")
    else:
        raise AttributeError(f"module 'lvlm_probe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_ROOMS) | {"capture"})


class _Package(types.ModuleType):
    """``lp.capture`` is the function although ``lvlm_probe.capture`` is also a subpackage: importing the
    subpackage binds it on its parent, which would shadow a lazily loaded function of the same name."""

    @property
    def capture(self) -> Any:
        from lvlm_probe.capture.run import capture

        return capture

    @capture.setter
    def capture(self, value: Any) -> None:  # the import system binds the subpackage here; the function stays
        pass


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what static tools and IDEs see
    from lvlm_probe import (attribution, benchmarks, detection, interventions, misalignment, organisms,  # noqa: F401
                            probing, tracing)
    from lvlm_probe.detection import ClaimSet, HallucinationDetector, collect_claims, trace_claims  # noqa: F401
    from lvlm_probe.attribution import (PatchAttribution, image_attention, knockout,  # noqa: F401
                                        patch_activations, patch_attribution)
    from lvlm_probe.capture import SELECTIONS, ActivationStore, capture  # noqa: F401
    from lvlm_probe.data import (Item, SceneGraph, SceneObject, SceneWorld, WorldConfig, load_image,  # noqa: F401
                                 read_items)
    from lvlm_probe.misalignment import Misalignment, Vocabulary, extract_claims, judge, judge_batch  # noqa: F401
    from lvlm_probe.models import (ROLE_NAMES, SITE_DOCS, LVLM, Batch, Generation, TokenRoles, load,  # noqa: F401
                                   supported_families)
    from lvlm_probe.organisms import train_organism  # noqa: F401
    from lvlm_probe.probing import LinearProbe, logit_lens, probe_sweep, scene_labels, word_probability  # noqa: F401
    from lvlm_probe.report import Report, render_diagnosis  # noqa: F401
    from lvlm_probe.tracing import (Decoding, DiagnoseConfig, Diagnosis, DiagnosisReport, Evidence, Run,  # noqa: F401
                                    Thresholds, cascade, collect_evidence, diagnose, generate_and_judge)

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

from lvlm_probe._version import __version__
from lvlm_probe.capture import SELECTIONS, ActivationStore, capture
from lvlm_probe import attribution, benchmarks, misalignment, organisms, probing, tracing
from lvlm_probe.attribution import (PatchAttribution, image_attention, knockout, patch_activations,
                                    patch_attribution)
from lvlm_probe.probing import LinearProbe, logit_lens, probe_sweep, scene_labels, word_probability
from lvlm_probe.report import Report, render_diagnosis
from lvlm_probe.tracing import (Decoding, DiagnoseConfig, Diagnosis, DiagnosisReport, Evidence, Run, Thresholds,
                                cascade, collect_evidence, diagnose, generate_and_judge)
from lvlm_probe.data import Item, SceneGraph, SceneObject, SceneWorld, WorldConfig, load_image, read_items
from lvlm_probe.misalignment import Misalignment, Vocabulary, extract_claims, judge, judge_batch
from lvlm_probe.errors import (InputError, LvlmProbeError, ModelLoadError, SiteError, StoreError,
                               UnsupportedModelError)
from lvlm_probe.models import (ROLE_NAMES, SITE_DOCS, LVLM, Batch, Generation, TokenRoles, load,
                               supported_families)

__all__ = [
    "ActivationStore", "Batch", "Generation", "InputError", "Item", "LVLM", "LvlmProbeError", "ModelLoadError", "ROLE_NAMES",
    "SELECTIONS", "SITE_DOCS", "SiteError", "StoreError", "TokenRoles", "UnsupportedModelError", "__version__",
    "Misalignment", "Vocabulary", "benchmarks", "extract_claims", "judge", "judge_batch", "misalignment",
    "SceneGraph", "SceneObject", "SceneWorld", "WorldConfig", "capture", "load", "load_image", "organisms",
    "read_items", "supported_families", "train_organism",
    "attribution", "PatchAttribution", "image_attention", "knockout", "patch_activations", "patch_attribution",
    "probing", "LinearProbe", "logit_lens", "probe_sweep", "scene_labels", "word_probability",
    "Report", "render_diagnosis", "tracing", "Diagnosis", "DiagnosisReport", "Thresholds", "diagnose",
    "Decoding", "DiagnoseConfig", "Evidence", "Run", "cascade", "collect_evidence", "generate_and_judge",
]
train_organism = organisms.train_organism

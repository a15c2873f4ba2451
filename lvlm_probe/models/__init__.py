"""Models: loading, family adapters, and the records that flow from prepare to generate."""

from lvlm_probe.models.base import SITE_DOCS, FamilyAdapter, ImageInputs, Site
from lvlm_probe.models.lvlm import FAMILIES, LVLM, load, supported_families
from lvlm_probe.models.records import ROLE_NAMES, Batch, Generation, TokenRoles

__all__ = [
    "FAMILIES", "LVLM", "ROLE_NAMES", "SITE_DOCS", "Batch", "FamilyAdapter", "Generation", "ImageInputs", "Site",
    "TokenRoles", "load", "supported_families",
]

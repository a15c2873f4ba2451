"""Capture: canonical sites, token selections, and the on-disk ActivationStore."""

from lvlm_probe.capture.run import APPLIES, SELECTIONS, capture
from lvlm_probe.capture.store import ActivationStore

__all__ = ["APPLIES", "SELECTIONS", "ActivationStore", "capture"]

"""Exception types. Every message names the offending item and says what to do."""

from __future__ import annotations


class LvlmProbeError(Exception):
    """Base class of lvlm_probe's own errors."""


class InputError(LvlmProbeError, ValueError):
    """Bad user input: an image that cannot be read, a prompt that does not fit the model, ..."""


class UnsupportedModelError(LvlmProbeError, ValueError):
    """The architecture has no family adapter."""


class ModelLoadError(LvlmProbeError, RuntimeError):
    """A checkpoint that cannot be loaded as it is: weights missing, renamed or of the wrong shape, a corrupt
    weights file, or a hub id that is neither cached nor reachable."""


class SiteError(LvlmProbeError, KeyError):
    """Unknown capture site or selection."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreError(LvlmProbeError, RuntimeError):
    """An activation store that cannot be opened, resumed or read as asked."""

"""`load` and the `LVLM` wrapper: one code path for hub ids, local directories and organisms."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from lvlm_probe.data.items import load_image
from lvlm_probe.errors import InputError, ModelLoadError, UnsupportedModelError
from lvlm_probe.models.base import FamilyAdapter, ImageInputs, Site
from lvlm_probe.models.gemma3 import Gemma3Adapter
from lvlm_probe.models.idefics3 import Idefics3Adapter
from lvlm_probe.models.llava import LlavaAdapter
from lvlm_probe.models.llava_next import LlavaNextAdapter
from lvlm_probe.models.llava_onevision import LlavaOnevisionAdapter
from lvlm_probe.models.mistral3 import Mistral3Adapter
from lvlm_probe.models.qwen2_5_vl import Qwen2_5_VLAdapter
from lvlm_probe.models.qwen2_vl import Qwen2VLAdapter
from lvlm_probe.models.qwen3_vl import Qwen3VLAdapter
from lvlm_probe.schema import RUN_DEFAULTS_FILE
from lvlm_probe.models.records import ROLE_NAMES, Batch, Generation, TokenRoles

_log = logging.getLogger("lvlm_probe")

#: Supported architecture families, keyed by HF ``config.model_type``.
FAMILIES: dict[str, type[FamilyAdapter]] = {
    mt: cls for cls in (LlavaAdapter, Qwen2_5_VLAdapter, Gemma3Adapter, LlavaNextAdapter, Qwen3VLAdapter,
                        Qwen2VLAdapter, Idefics3Adapter, LlavaOnevisionAdapter, Mistral3Adapter)
    for mt in cls.model_types
}


def supported_families() -> dict[str, str]:
    """``{model_type: family}`` of every architecture lvlm_probe can load."""
    return {mt: cls.family for mt, cls in FAMILIES.items()}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(dev)!r} requested but CUDA is not available; pass device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` → float32 on CPU, bfloat16 (or float16) on CUDA; strings like ``"float16"`` accepted."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
        name = aliases.get(name, name)
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise InputError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
        return getattr(torch, name)
    return dtype


def _bridge_supports(hf_class_name: str) -> bool:
    """Whether the installed TransformerLens has a TransformerBridge adapter for this HF architecture."""
    from transformer_lens.factories.architecture_adapter_factory import (SUPPORTED_ARCHITECTURES,
                                                                         ArchitectureAdapterFactory)

    try:
        ArchitectureAdapterFactory.discover_entry_points()  # adapters other packages register
        known = ArchitectureAdapterFactory._adapters
    except AttributeError:  # another TransformerLens layout: its static table
        known = SUPPORTED_ARCHITECTURES
    return hf_class_name in known


def _check_torchvision() -> None:
    """Refuse, with the reason, an installed torchvision that does not import: transformers imports it whenever its
    package metadata is present, so configs and processors of every family then fail with a lazy-import error."""
    if importlib.util.find_spec("torchvision") is not None and not _torchvision_importable():
        raise ModelLoadError(
            "torchvision is installed but does not import (a CUDA build beside a CPU torch?), and transformers cannot "
            "load configs or image processors while it is there; lvlm_probe needs no torchvision: uninstall it, or "
            "install the torchvision build that matches your torch")


def _torchvision_importable() -> bool:
    """True when torchvision really imports (a CUDA wheel beside a CPU torch is installed but does not)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means the fast processors cannot use it
        return False
    return True


#: TransformerLens bridge adapters that list torchvision as required (only HF's fast processors need it).
_TL_NEEDS_TORCHVISION: dict[str, tuple[str, str]] = {
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLArchitectureAdapter"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLArchitectureAdapter"),
}


@contextlib.contextmanager
def _quiet_bridge_boot(model_type: str) -> Iterator[None]:
    """Boot TransformerBridge without its two side effects that hurt lvlm_probe users.

    - TransformerLens 4.3 ``pip install``-s torchvision on the fly when a multimodal checkpoint has no
      loadable ``AutoProcessor``; on a CPU torch that pulls a multi-GB CUDA torch build into the
      environment and breaks it. lvlm_probe processes images itself, so the install is refused here.
    - Its Qwen2.5-VL and Qwen3-VL adapters insist on torchvision, which only HF's *fast* image processors need;
      lvlm_probe uses the PIL processors, so that check is relaxed.
    Both are restored on exit.
    """
    from transformer_lens.model_bridge.sources.transformers import helpers as tl_helpers

    saved_ensure = tl_helpers._ensure_torchvision
    tl_helpers._ensure_torchvision = _torchvision_importable
    restore: list[tuple[Any, list]] = []
    if model_type in _TL_NEEDS_TORCHVISION and not _torchvision_importable():
        mod, name = _TL_NEEDS_TORCHVISION[model_type]
        cls = getattr(importlib.import_module(f"transformer_lens.model_bridge.supported_architectures.{mod}"), name)
        restore.append((cls, cls.required_libraries))
        cls.required_libraries = []
    try:
        yield
    finally:
        tl_helpers._ensure_torchvision = saved_ensure
        for cls, libs in restore:
            cls.required_libraries = libs


def _find_chat_template(name_or_path: str, tokenizer: Any, revision: str | None) -> str | None:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, str) and tmpl:
        return tmpl
    from transformers.utils import cached_file

    for fname, key in (("chat_template.jinja", None), ("chat_template.json", "chat_template"),
                       ("processor_config.json", "chat_template")):
        try:
            path = cached_file(name_or_path, fname, revision=revision, _raise_exceptions_for_missing_entries=False)
        except Exception:  # noqa: BLE001 - offline / missing: fall back to the family default
            path = None
        if path and os.path.isfile(path):
            text = Path(path).read_text(encoding="utf-8")
            if key is None:
                return text
            data = json.loads(text)
            if isinstance(data.get(key), str):
                return data[key]
    return None


def load(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    backend: str | None = None,
) -> LVLM:
    """Load an LVLM through TransformerBridge (or, for a family it has no adapter for, forward hooks).

    Parameters
    ----------
    name_or_path : str or path
        A hub id (e.g. ``"llava-hf/llava-1.5-7b-hf"``), a local directory holding config, weights,
        tokenizer and image processor, or ``"organism:NAME"`` for a model of the organism zoo.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype or str, optional
        Default: float32 on CPU, bfloat16 (float16 without bf16 support) on CUDA.
    revision : str, optional
        Hub revision (branch, tag or commit).
    device_map : str or dict, optional
        Split one model over several devices (a model larger than one GPU): ``"auto"``, ``"balanced"`` or a
        dict module → device, as in ``transformers`` ``from_pretrained`` (accelerate places the layers and moves
        activations between devices). Exclusive with ``device``; inputs go to the device of the input
        embeddings (``model.device``). See docs/store.md (distributed capture) for one map per rank.
    max_memory : dict, optional
        With ``device_map``: the memory each device may hold (e.g. ``{0: "40GiB", 1: "40GiB"}``).
    backend : {"bridge", "hooks"}, optional
        How canonical sites are hooked. Default: ``"bridge"`` (TransformerLens TransformerBridge) when the installed
        TransformerLens has an adapter for the architecture, else ``"hooks"`` (plain PyTorch forward hooks on the HF
        modules, :mod:`lvlm_probe.models.hook_backend`). The choice is logged, and ``model.info()["backend"]``
        records it.

    Returns
    -------
    LVLM

    Raises
    ------
    UnsupportedModelError
        The architecture has no family adapter; the message lists the supported families.
    ModelLoadError
        The checkpoint leaves a parameter unfilled (missing, renamed or mis-shaped tensors), a weights
        file is corrupt, or a hub id is neither cached nor reachable.
    """
    name, defaults = _resolve_name(str(name_or_path))
    _check_load_args(device, device_map, max_memory, backend)
    dev = resolve_device(device if device_map is None else "cpu")
    # a device map defaults to the accelerator's dtype (its layers land on GPUs when there are any)
    dt = resolve_dtype(dtype, torch.device("cuda") if device_map is not None and torch.cuda.is_available() else dev)
    _check_json_files(name)
    _check_torchvision()
    config = _load_config(name, revision)
    adapter_cls = _family_of(name, config)
    tokenizer, image_processor = _load_processors(name, revision)  # before the weights: a broken one fails fast
    hf_model = load_hf_model(name, adapter_cls.hf_class(), config=config, revision=revision,
                             device=Placement(dev, device_map, max_memory), dtype=dt)
    if device_map is not None:
        dev = hf_model.get_input_embeddings().weight.device
    bridge = _hook_host(name, config, adapter_cls, hf_model, (tokenizer, image_processor), backend,
                        Placement(dev, device_map, max_memory), dt, revision)
    bridge.eval()
    adapter = adapter_cls(config, tokenizer, image_processor, bridge.original_model)
    chat = _find_chat_template(name, tokenizer, revision) or adapter.default_chat_template()
    model = LVLM(bridge, adapter, name=str(name_or_path), path=name, revision=revision, device=dev, dtype=dt,
                 chat_template=chat)
    model.run_defaults = {**read_run_defaults(name), **defaults}
    return model




def _check_load_args(device: Any, device_map: Any, max_memory: Any, backend: Any) -> None:
    """One line per contradictory or unknown loading setting, before anything is read."""
    if device_map is not None and device is not None:
        raise InputError(f"pass device={device!r} or device_map={device_map!r}, not both: a device map places "
                         "every module itself")
    if max_memory is not None and device_map is None:
        raise InputError("max_memory only applies with device_map (e.g. device_map='auto')")
    if backend not in (None, "bridge", "hooks"):
        raise InputError(f"backend={backend!r}: use 'bridge', 'hooks' or None (bridge where TransformerLens has an "
                         "adapter, else hooks)")


def _family_of(name: str, config: Any) -> type[FamilyAdapter]:
    """The adapter class serving ``config.model_type``, or UnsupportedModelError listing the families."""
    adapter_cls = FAMILIES.get(config.model_type)
    if adapter_cls is None:
        fam = ", ".join(f"{mt} ({cls.family})" for mt, cls in FAMILIES.items())
        raise UnsupportedModelError(
            f"{name!r} is a {config.model_type!r} model ({', '.join(config.architectures or [])}); "
            f"lvlm_probe supports: {fam}. Adding a family is one adapter module in lvlm_probe/models/."
        )
    return adapter_cls


def _hook_host(name: str, config: Any, adapter_cls: type[FamilyAdapter], hf_model: Any, processors: tuple,
               backend: str | None, place: Placement, dt: torch.dtype, revision: str | None) -> Any:
    """What the hooks live on: TransformerBridge (booted over ``hf_model``) where TransformerLens has an adapter
    for the architecture (or ``backend="bridge"``), else the forward-hook fallback; the choice is logged."""
    no_adapter = backend is None and not _bridge_supports(adapter_cls.hf_class_name)
    partial = backend is None and bool(adapter_cls.bridge_missing_sites)
    if backend == "hooks" or no_adapter or partial:
        from lvlm_probe.models.hook_backend import HookBackend

        host = HookBackend(hf_model, adapter_cls(config, *processors, hf_model))
        why = ("requested" if backend == "hooks" else "the installed TransformerLens has no bridge adapter for "
               f"{adapter_cls.hf_class_name}" if no_adapter else "its TransformerLens bridge cannot hook "
               f"{', '.join(sorted(adapter_cls.bridge_missing_sites))} (backend='bridge' gives the other sites)")
        _log.info("lvlm_probe: %s (%s) runs on forward hooks: %s", name, config.model_type, why)
        return host
    from transformer_lens.model_bridge import TransformerBridge

    with _quiet_bridge_boot(config.model_type):
        host = TransformerBridge.boot_transformers(name, hf_model=hf_model, dtype=dt, revision=revision,
                                                   device=None if place.device_map is not None else str(place.device))
    _log.info("lvlm_probe: %s (%s) runs on TransformerBridge", name, config.model_type)
    return host


#: JSON files of a checkpoint directory that must parse when present (a corrupt one is named before loading).
_JSON_FILES: tuple[str, ...] = ("config.json", "generation_config.json", "preprocessor_config.json",
                                "processor_config.json", "tokenizer_config.json", "tokenizer.json",
                                "special_tokens_map.json", "chat_template.json", "model.safetensors.index.json")


def _check_json_files(name: str) -> None:
    """In a local model directory, every JSON file transformers reads must be a UTF-8 JSON object."""
    if not os.path.isdir(name):
        return
    for fname in _JSON_FILES:
        p = Path(name) / fname
        if not p.is_file():
            continue
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ModelLoadError(f"{str(p)!r} is not UTF-8 text (byte {err.start}); restore it from the "
                                 "checkpoint") from None
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{str(p)!r} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                                 "restore it from the checkpoint") from None
        except RecursionError:
            raise ModelLoadError(f"{str(p)!r} is nested too deeply to read; restore it from the checkpoint") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{str(p)!r} must hold a JSON object, found {type(data).__name__}; restore it from "
                                 "the checkpoint")


def _load_processors(name: str, revision: str | None) -> tuple[Any, Any]:
    """The checkpoint's tokenizer and image processor, with an error that names what is missing.

    The image processor is HF's PIL one wherever the family has one (``backend="pil"``): with torchvision
    importable, ``AutoImageProcessor`` would otherwise pick the torchvision ("fast") variant, whose resize and
    normalisation differ numerically, so the same checkpoint (an organism's planted behaviour, a stored
    capture) would see other pixels depending on what else is installed. A processor with no PIL variant
    falls back to the other backend inside transformers.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    out = []
    for what, cls, files, kw in (("tokenizer", AutoTokenizer, "tokenizer.json / tokenizer_config.json", {}),
                                 ("image processor", AutoImageProcessor, "preprocessor_config.json",
                                  {"backend": "pil"})):
        try:
            out.append(cls.from_pretrained(name, revision=revision, **kw))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            msg = " ".join(str(err).split())[:200]
            raise ModelLoadError(f"{name!r}: cannot load its {what} ({type(err).__name__}: {msg}); the model "
                                 f"directory needs {files} beside config.json") from None
    return out[0], out[1]


def read_run_defaults(path: str) -> dict:
    """The checkpoint's ``run_defaults.json`` (organisms ship one), or ``{}``."""
    p = Path(path) / RUN_DEFAULTS_FILE
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{str(p)!r} is not valid JSON ({err}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{str(p)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _resolve_name(name: str) -> tuple[str, dict]:
    """``organism:NAME`` → its checkpoint directory and its run defaults; a local path must hold a config.json."""
    defaults: dict = {}
    if name.startswith("organism:"):
        org = name.split(":", 1)[1]
        try:
            from lvlm_probe.organisms import organism_path, run_defaults  # type: ignore[import-not-found]
        except ImportError:
            raise InputError(
                f"'organism:{org}': the organism zoo is not part of this installation yet; "
                "load a local model directory instead"
            ) from None
        name = str(organism_path(org))
        defaults = run_defaults(org)  # a run-setting organism (sampling) shares a checkpoint but not its decoding
    if os.path.exists(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise InputError(f"{name!r} has no config.json; a model directory needs config, weights, tokenizer and image processor")
    return name, defaults


def _load_config(name: str, revision: str | None) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, revision=revision)
    except (ArithmeticError, TypeError, KeyError, AttributeError) as err:  # the config's own checks, by their values
        msg = " ".join(str(err).split())[:200]
        raise ModelLoadError(f"{name!r}: its config.json does not describe a buildable model ({err.__class__.__name__}: "
                             f"{msg}); check its sizes (heads, hidden size, layers)") from None
    except (OSError, ValueError) as err:
        if not os.path.exists(name):
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise ModelLoadError(
                    f"{name!r} is not a directory and not a hub id in the local Hugging Face cache, and offline mode "
                    "is on (HF_HUB_OFFLINE=1); download it once with network access, or pass a model directory"
                ) from None
            raise ModelLoadError(f"{name!r} is not a directory and not a hub id that could be fetched "
                                 f"({err.__class__.__name__}: {' '.join(str(err).split())[:200]})") from None
        msg = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{name!r}: cannot read its config.json ({err.__class__.__name__}: {msg})") from None


@dataclass(frozen=True)
class Placement:
    """Where the HF model's weights go: one ``device``, or a ``device_map`` (with ``max_memory``) over several."""

    device: torch.device
    device_map: str | dict | None = None
    max_memory: dict | None = None

    def from_pretrained_kwargs(self) -> dict:
        if self.device_map is None:
            return {}
        return {"device_map": self.device_map, **({"max_memory": self.max_memory} if self.max_memory else {})}


def load_hf_model(name: str, hf_class: type, *, config: Any, revision: str | None, device: torch.device | Placement,
                  dtype: torch.dtype) -> Any:
    """Load the HF model with eager attention and refuse a checkpoint that does not fill every parameter.

    ``from_pretrained`` only logs missing or renamed tensors (and TransformerLens silences the
    transformers logger), leaving them randomly initialised: such a model gives wrong logits with no
    word. Here its loading report is checked: a missing or mis-shaped parameter raises
    :class:`ModelLoadError` naming the tensors; tensors the model does not use give a warning.

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode on ``device`` (or placed by its device map) in ``dtype``.
    """
    place = device if isinstance(device, Placement) else Placement(device)
    try:
        model, info = hf_class.from_pretrained(
            name, config=config, revision=revision, dtype=dtype, attn_implementation="eager",
            output_loading_info=True, ignore_mismatched_sizes=True,  # reported (and refused) below, by name
            **place.from_pretrained_kwargs(),
        )
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelLoadError(_weights_error(name, err)) from None
    except (ArithmeticError, TypeError, KeyError, AttributeError, IndexError) as err:  # building from the config
        msg = " ".join(str(err).split())[:200]
        raise ModelLoadError(f"{name!r}: cannot build the model from its config.json ({err.__class__.__name__}: "
                             f"{msg}); check the sizes in config.json (heads, hidden size, layers)") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for a corrupt header
        if type(err).__name__ != "SafetensorError":
            raise
        raise ModelLoadError(_weights_error(name, err)) from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(f"{k[0]} {tuple(k[1])} vs model {tuple(k[2])}" if isinstance(k, tuple) and len(k) == 3
                        else str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        what = []
        if missing:
            what.append(f"{len(missing)} parameter(s) missing from the checkpoint ({_some(missing)})")
        if mismatched:
            what.append(f"{len(mismatched)} of the wrong shape ({_some(mismatched)})")
        raise ModelLoadError(
            f"{name!r}: {'; '.join(what)}. They would be randomly initialised and every output would be wrong; "
            "use a complete checkpoint (config and weights from the same model)"
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        warnings.warn(f"{name!r}: {len(unexpected)} checkpoint tensor(s) are not used by the model "
                      f"({_some(unexpected)})", stacklevel=3)
    return (model if place.device_map is not None else model.to(place.device)).eval()


def _some(keys: Sequence[str], k: int = 3) -> str:
    return ", ".join(keys[:k]) + (f", ... {len(keys) - k} more" if len(keys) > k else "")


def _weights_error(name: str, err: Exception) -> str:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not os.path.exists(name):
        return (f"{name!r}: its weights are not in the local Hugging Face cache and offline mode is on "
                "(HF_HUB_OFFLINE=1); download it once with network access, or pass a local model directory")
    bad = _bad_weight_file(name)
    where = f" ({bad} is unreadable)" if bad else ""
    return f"{name!r}: cannot load its weights{where} ({err.__class__.__name__}: {msg}); check the weight files"


def _bad_weight_file(name: str) -> str | None:
    """The first ``*.safetensors`` file of a local directory whose header safetensors cannot read, or None."""
    if not os.path.isdir(name):
        return None
    from safetensors import safe_open

    for p in sorted(Path(name).glob("*.safetensors")):
        try:
            with safe_open(str(p), framework="pt") as fh:
                fh.keys()
        except Exception:  # noqa: BLE001 - any failure to read the header names the file
            return p.name
    return None


_ROLE_ID: dict[str, int] = {n: k for k, n in enumerate(ROLE_NAMES)}


@dataclass
class _TokenRow:
    """One item's expanded token ids, role ids, (image, row, col) coordinates and tiles, before padding."""

    text: str
    ids: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    coords: list[tuple[int, int, int]] = field(default_factory=list)
    tiles: list[int] = field(default_factory=list)
    grids: list[tuple[int, int]] = field(default_factory=list)
    tile_grids: list[list[tuple[int, int]]] = field(default_factory=list)

    def add(self, token: int, role: int, coord: tuple[int, int, int], tile: int = -1) -> None:
        self.ids.append(token)
        self.roles.append(role)
        self.coords.append(coord)
        self.tiles.append(tile)

    def add_image(self, images: ImageInputs, k: int, layout: list[tuple[int, int, int]]) -> None:
        """Record image ``k`` of the batch (the item's next image): its grid, its tiles' grids."""
        self.grids.append(images.llm_grids[k])
        self.tile_grids.append(images.tiles(k))
        if len(layout) != images.tokens_per_image[k]:
            raise UnsupportedModelError(f"the adapter lays out {len(layout)} tokens for an image of "
                                        f"{images.tokens_per_image[k]} tokens")

    @property
    def n_image_tokens(self) -> int:
        return sum(1 for r in self.roles if r == _ROLE_ID["image"])


def _pad_left(rows: list[_TokenRow], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, TokenRoles]:
    """Left-pad the items' rows into ``input_ids``, ``attention_mask`` [B, T] and the role map."""
    T, B = max(len(r.ids) for r in rows), len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    role_id = torch.full((B, T), -1, dtype=torch.long)
    coords = torch.full((B, T, 3), -1, dtype=torch.long)
    tiles = torch.full((B, T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.ids)
        input_ids[b, T - n:] = torch.tensor(r.ids, dtype=torch.long)
        attn[b, T - n:] = 1
        role_id[b, T - n:] = torch.tensor(r.roles, dtype=torch.long)
        coords[b, T - n:] = torch.tensor(r.coords, dtype=torch.long)
        tiles[b, T - n:] = torch.tensor(r.tiles, dtype=torch.long)
    roles = TokenRoles(patch_coords=coords, grids=[r.grids for r in rows], patch_tiles=tiles,
                       tile_grids=[r.tile_grids for r in rows],
                       **{n: role_id == k for k, n in enumerate(ROLE_NAMES)})
    return input_ids, attn, roles


class LVLM:
    """A loaded vision-language model: TransformerBridge + family adapter + tokenizer/processor.

    Use :func:`load` to build one. Attributes ``bridge`` (TransformerBridge), ``hf_model`` (the
    wrapped HF model), ``adapter``, ``tokenizer``, ``image_processor``, ``device``, ``dtype``.
    """

    def __init__(self, bridge: Any, adapter: FamilyAdapter, *, name: str, path: str, revision: str | None,
                 device: torch.device, dtype: torch.dtype, chat_template: str) -> None:
        self.bridge = bridge
        self.adapter = adapter
        self.name = name
        self.path = path
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.chat_template = chat_template
        self.tokenizer = adapter.tokenizer
        self.image_processor = adapter.image_processor
        #: Defaults a diagnosis run of this model uses (``run_defaults.json`` beside the checkpoint; organisms
        #: ship one): ``decoding`` (generate settings) and ``probe_world`` (scene-world config of probe items).
        self.run_defaults: dict = {}

    def __repr__(self) -> str:
        return (f"LVLM({self.name!r}, family={self.adapter.family}, device={self.device}, dtype={self.dtype}, "
                f"llm_layers={self.adapter.n_llm_layers}, vision_layers={self.adapter.n_vision_layers})")

    # ---- facts -------------------------------------------------------------------------------
    @property
    def hf_model(self) -> Any:
        return self.bridge.original_model

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def backend(self) -> str:
        """``"bridge"`` (TransformerLens TransformerBridge hooks) or ``"hooks"`` (the forward-hook fallback of
        :mod:`lvlm_probe.models.hook_backend`, for a family the installed TransformerLens has no adapter for)."""
        return getattr(self.bridge, "backend", "bridge")

    @property
    def image_token_id(self) -> int:
        return self.adapter.image_token_id

    def sites(self) -> list[str]:
        """Every concrete canonical site name of this model."""
        return self.adapter.all_sites()

    def hook_name(self, site: str | Site) -> str:
        """The TransformerBridge hook name behind a canonical site."""
        s = site if isinstance(site, Site) else self.adapter.parse_site(site)
        return self.adapter.hook_name(s)

    def info(self) -> dict:
        """JSON-able description (family, layers, ids, device, dtype, config hash, revision)."""
        return {
            "name": self.name,
            "revision": self.revision,
            "config_hash": self.adapter.config_hash(),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "backend": self.backend,
            **self.adapter.describe(),
        }

    # ---- inputs ------------------------------------------------------------------------------
    def prepare(
        self,
        images: Sequence[Any] | Any,
        prompts: Sequence[str] | str,
        *,
        chat_template: bool = True,
        system: str | None = None,
        answers: Sequence[str | None] | None = None,
        item_ids: Sequence[str] | None = None,
    ) -> Batch:
        """Tokenise prompts, process images and build the token-role map.

        Parameters
        ----------
        images : sequence
            One entry per prompt: a PIL image, a path, a list of those (several images) or None.
        prompts : sequence of str
            With ``chat_template=True`` the bare question (images go first in the user turn);
            with ``chat_template=False`` the full prompt, carrying the family's image placeholder
            once per image (``<image>`` is accepted for every family).
        system : str, optional
            System message (chat template only); its tokens get the ``system`` role.
        answers : sequence of str, optional
            Teacher-forced answers appended after the generation prompt (role ``answer``).
        item_ids : sequence of str, optional
            Used in error messages and carried on the batch.

        Returns
        -------
        Batch
            Left-padded, on the model's device, pixel values in the model's dtype.
        """
        if isinstance(prompts, str):
            prompts, images = [prompts], [images]
        prompts, images = list(prompts), list(images)
        ids = [str(i) for i in item_ids] if item_ids is not None else [str(k) for k in range(len(prompts))]
        if len(images) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(images)} image entries; give one entry per prompt")
        if answers is not None and len(answers) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(answers)} answers")
        per_item = self._load_images(images, ids)
        flat = [im for lst in per_item for im in lst]
        img_inputs: ImageInputs | None = self._process_images(flat, per_item, ids) if flat else None
        rows: list[_TokenRow] = []
        cursor = 0
        for b, (iid, prompt) in enumerate(zip(ids, prompts)):
            answer = answers[b] if answers is not None else None
            text, spans = self._render(iid, prompt, len(per_item[b]), chat_template, system, answer)
            rows.append(self._tokenize(iid, text, spans, len(per_item[b]), img_inputs, cursor, chat_template))
            cursor += len(per_item[b])
            limit = self.adapter.max_positions
            if limit is not None and len(rows[-1].ids) > limit:
                raise InputError(f"item {iid!r}: the prompt and its image tokens are {len(rows[-1].ids)} tokens but "
                                 f"the model's context holds {limit}; shorten the prompt or use fewer/smaller images")
        input_ids, attn, roles = _pad_left(rows, self._pad_id())
        batch = Batch(
            input_ids=input_ids,
            attention_mask=attn,
            pixel_values=img_inputs.pixel_values if img_inputs is not None else None,
            extras=dict(img_inputs.extras) if img_inputs is not None else {},
            roles=roles,
            prompts=[r.text for r in rows],
            n_images=[len(x) for x in per_item],
            item_ids=ids,
            n_image_tokens=[r.n_image_tokens for r in rows],
            image_inputs=img_inputs,
            token_type_input=self.adapter.token_type_input,
            images_per_item_input=self.adapter.images_per_item_input,
        )
        return batch.to(self.device, self.dtype)

    def prepare_items(self, items: Sequence[Any], **kwargs: Any) -> Batch:
        """:meth:`prepare` of :class:`~lvlm_probe.data.Item` s: their images, prompts and ids (so every frame
        computed from the batch joins the store's ``item_id``)."""
        items = list(items)
        return self.prepare([it.image for it in items], [it.prompt for it in items],
                            item_ids=[it.id for it in items], **kwargs)

    def _process_images(self, flat: list[Any], per_item: list[list[Any]], ids: list[str]) -> ImageInputs:
        """The adapter's image processing of the batch; when it refuses, the item whose image it refuses is named."""
        try:
            return self.adapter.process_item_images(per_item)
        except (ValueError, RuntimeError, TypeError, OSError) as exc:
            for iid, ims in zip(ids, per_item):
                for k, im in enumerate(ims):
                    try:
                        self.adapter.process_images([im])
                    except (ValueError, RuntimeError, TypeError, OSError) as one:
                        raise InputError(
                            f"item {iid!r}: the {self.family} image processor cannot take image {k} "
                            f"({im.width}x{im.height} pixels): {' '.join(str(one).split())}; resize or crop it"
                        ) from None
            raise exc

    @staticmethod
    def _load_images(images: list[Any], ids: list[str]) -> list[list[Any]]:
        """Per item, its images as PIL (an entry may be None, one image or a list)."""
        out = []
        for iid, im in zip(ids, images):
            raw = [] if im is None else (list(im) if isinstance(im, (list, tuple)) else [im])
            out.append([load_image(x, item_id=iid) for x in raw])
        return out

    def _render(self, iid: str, prompt: str, n_img: int, chat_template: bool, system: str | None,
                answer: str | None) -> tuple[str, dict[str, tuple[int, int]]]:
        """The item's full text and the character spans of its ``question``, ``system`` and ``answer``."""
        ad = self.adapter
        spans: dict[str, tuple[int, int]] = {}
        if not isinstance(prompt, str):
            raise InputError(f"item {iid!r}: the prompt must be a string, got {type(prompt).__name__} "
                             f"({str(prompt)[:60]!r}); give the question as text")
        if not prompt.replace("<image>", "").replace(ad.image_placeholder, "").strip():
            raise InputError(f"item {iid!r}: the prompt is empty ({prompt!r}); give a question or an instruction")
        if "\x00" in prompt:
            raise InputError(f"item {iid!r}: the prompt holds a NUL character at position {prompt.index(chr(0))} "
                             "(a corrupt or binary text?); remove it")
        if chat_template:
            if ad.image_placeholder in prompt or "<image>" in prompt:
                raise InputError(
                    f"item {iid!r}: the prompt contains an image placeholder but chat_template=True places "
                    "images itself; pass the bare question, or use chat_template=False"
                )
            text = ad.render_chat(prompt, n_img, system, self.chat_template)
            q0 = text.rfind(prompt) if prompt else -1
            if q0 >= 0:
                spans["question"] = (q0, q0 + len(prompt))
            if system:
                s0 = text.find(system)
                if s0 >= 0:
                    spans["system"] = (s0, s0 + len(system))
        else:
            text = prompt if ad.image_placeholder == "<image>" else prompt.replace("<image>", ad.image_placeholder)
            spans["question"] = (0, len(text))
        if answer is not None:
            a0 = len(text) + len(ad.answer_prefix())
            text = text + ad.answer_prefix() + answer
            spans["answer"] = (a0, len(text))
        return text, spans

    def _tokenize(self, iid: str, text: str, spans: dict[str, tuple[int, int]], n_img: int,
                  img_inputs: ImageInputs | None, cursor: int, chat_template: bool) -> _TokenRow:
        """Token ids, role ids and patch coordinates of one item, each image placeholder expanded."""
        ad, tok = self.adapter, self.tokenizer
        bos = tok.bos_token
        add_special = not (bos and text.startswith(bos))
        enc = tok(text, add_special_tokens=add_special, return_offsets_mapping=True)
        tids, offs = enc["input_ids"], enc["offset_mapping"]
        n_ph = sum(1 for t in tids if t == ad.placeholder_token_id)
        if n_ph != n_img:
            how = ("add the placeholder " + repr(ad.image_placeholder) + " once per image") if not chat_template \
                else "check the chat template"
            raise InputError(
                f"item {iid!r}: prompt has {n_ph} image placeholder(s) but {n_img} image(s) were given; {how}"
            )
        self._warn_unknown_words(iid, text, tids, offs)
        if n_img and ad.placeholder_expansion(1) is not None:
            assert img_inputs is not None
            return self._tokenize_expanded(iid, text, spans, tids, offs, add_special, img_inputs, cursor)
        special = ad.template_token_ids()
        row = _TokenRow(text=text)
        k_img = 0
        for t, (s, e) in zip(tids, offs):
            if t == ad.image_token_id:
                assert img_inputs is not None
                layout = ad.image_token_layout(img_inputs, cursor + k_img)
                row.add_image(img_inputs, cursor + k_img, layout)
                for tile, r, c in layout:
                    row.add(t, _ROLE_ID["image"], (k_img, r, c), tile)
                k_img += 1
                continue
            role = "template"
            if t not in special and e > s:
                role = next((n for n in ("answer", "question", "system")
                             if n in spans and s < spans[n][1] and e > spans[n][0]), "template")
            row.add(t, _ROLE_ID[role], (-1, -1, -1))
        return row

    def _tokenize_expanded(self, iid: str, text: str, spans: dict[str, tuple[int, int]], tids: list[int],
                           offs: list[tuple[int, int]], add_special: bool, img_inputs: ImageInputs,
                           cursor: int) -> _TokenRow:
        """:meth:`_tokenize` for a family whose processor rewrites each placeholder in the text (the adapter's
        ``placeholder_expansion``): rewrite, then tokenise the rewritten text as the HF processor does. Tokens
        that lie inside an inserted expansion are ``image`` (the image token) or ``template``; the others take
        their role from the character spans, moved to the rewritten text."""
        ad, tok = self.adapter, self.tokenizer
        n_tok = img_inputs.tokens_per_image
        places = [(s, e) for t, (s, e) in zip(tids, offs) if t == ad.placeholder_token_id]
        parts, inserted, grow, last = [], [], [], 0  # grow: (old end of a placeholder, cumulative growth)
        new_len = 0
        for k, (s, e) in enumerate(places):
            rep = ad.placeholder_expansion(n_tok[cursor + k], images=img_inputs, index=cursor + k)
            parts.append(text[last:s])
            new_len += s - last
            inserted.append((new_len, new_len + len(rep)))
            parts.append(rep)
            new_len += len(rep)
            grow.append((e, new_len - e))
            last = e
        parts.append(text[last:])
        expanded = "".join(parts)

        def moved(p: int) -> int:
            return p + next((g for e, g in reversed(grow) if e <= p), 0)

        new_spans = {n: (moved(a), moved(b)) for n, (a, b) in spans.items()}
        enc = tok(expanded, add_special_tokens=add_special, return_offsets_mapping=True)
        special = ad.template_token_ids()
        separators = ad.separator_token_ids()
        row = _TokenRow(text=text)
        coords = [ad.image_token_layout(img_inputs, cursor + k) for k in range(len(places))]
        for k in range(len(places)):
            row.add_image(img_inputs, cursor + k, coords[k])
        k_img, j = 0, 0
        for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
            if t == ad.image_token_id and k_img < len(places):
                tile, r, c = coords[k_img][j]
                row.add(t, _ROLE_ID["image"], (k_img, r, c), tile)
                j += 1
                if j == len(coords[k_img]):
                    k_img, j = k_img + 1, 0
                continue
            role = "template"
            in_expansion = any(a <= s and e <= z for a, z in inserted) if e > s else False
            if in_expansion and t in separators:
                role = "separator"
            elif t not in special and e > s and not in_expansion:
                role = next((n for n in ("answer", "question", "system")
                             if n in new_spans and s < new_spans[n][1] and e > new_spans[n][0]), "template")
            row.add(t, _ROLE_ID[role], (-1, -1, -1))
        found = sum(1 for t in enc["input_ids"] if t == ad.image_token_id)
        if found != sum(n_tok[cursor:cursor + len(places)]):
            raise InputError(f"item {iid!r}: after expanding its {len(places)} image placeholder(s) the prompt holds "
                             f"{found} image tokens but its images give {sum(n_tok[cursor:cursor + len(places)])}; "
                             f"remove {tok.convert_ids_to_tokens(ad.image_token_id)!r} from the prompt text")
        return row

    def _warn_unknown_words(self, iid: str, text: str, tids: list[int], offs: list[tuple[int, int]]) -> None:
        """Warn (once per call) when the tokenizer maps words of the prompt to its unknown token."""
        unk = self.tokenizer.unk_token_id
        if unk is None or unk not in tids:
            return
        words = sorted({text[s:e] for t, (s, e) in zip(tids, offs) if t == unk and e > s})
        warnings.warn(
            f"item {iid!r}: the tokenizer does not know {words} and reads each as {self.tokenizer.unk_token!r}; "
            "the model sees no such word. Use words of its vocabulary (an organism understands its scene world's "
            "prompts, e.g. 'describe the image .' or 'is there a circle ?')", stacklevel=4)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def check_batch(self, batch: Batch) -> None:
        """Raise a clear error when a batch cannot run on this model (device, image-token count)."""
        if batch.input_ids.device.type != self.device.type or (
            self.device.index is not None and batch.input_ids.device.index not in (None, self.device.index)
        ):
            raise InputError(
                f"batch tensors are on {batch.input_ids.device} but the model is on {self.device}; "
                "call batch.to(model.device) or prepare() with this model"
            )
        if batch.pixel_values is not None and batch.pixel_values.device != batch.input_ids.device:
            raise InputError(f"pixel_values on {batch.pixel_values.device} but input_ids on {batch.input_ids.device}; "
                             "move the whole batch with batch.to(device)")
        found = (batch.input_ids == self.image_token_id).sum(dim=1).tolist()
        ids = batch.item_ids or [str(k) for k in range(len(found))]
        expected = batch.n_image_tokens or [0] * len(found)
        for iid, f, e in zip(ids, found, expected):
            if f != e:
                raise InputError(
                    f"item {iid!r}: input_ids hold {f} image tokens but its image(s) give {e} features; "
                    "build inputs with LVLM.prepare (it expands each placeholder to the right count)"
                )

    # ---- running -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Iterator[LVLM]:
        """Temporarily add bridge forward hooks (by bridge hook name); removed on exit, also on error."""
        with self.bridge.hooks(fwd_hooks=list(fwd_hooks)):
            yield self

    @torch.no_grad()
    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [B, T, V] of the batch (hooks added with :meth:`hooks` fire)."""
        self.check_batch(batch)
        out = self.hf_model(input_ids=batch.input_ids, **batch.model_inputs(), use_cache=False)
        return out.logits

    @torch.no_grad()
    def run_with_cache(self, batch: Batch, sites: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward once and return logits and the raw tensors of canonical sites (``*`` expands)."""
        self.check_batch(batch)
        parsed = self.adapter.expand_sites(sites)
        names = {self.adapter.hook_name(s): s.name for s in parsed}
        self._check_hooks(names)
        cache: dict[str, torch.Tensor] = {}

        def grabber(canonical: str) -> Callable:
            # bridge hook points may report an alias as their name, so key by closure, not hook.name
            def grab(t: torch.Tensor, hook: Any = None) -> torch.Tensor:
                cache[canonical] = t.detach()
                return t

            return grab

        with self.hooks([(h, grabber(c)) for h, c in names.items()]):
            logits = self.forward(batch)
        return logits, cache

    def _check_hooks(self, names: dict[str, str]) -> None:
        if hasattr(self.bridge, "check_hooks"):  # the forward-hook backend names why a site is missing
            self.bridge.check_hooks(list(names))
        hd = self.bridge.hook_dict
        missing = [f"{c} -> {h}" for h, c in names.items() if h not in hd]
        if missing:
            gaps = self.adapter.bridge_missing_sites
            why = sorted({gaps[s] for h, c in names.items() if h not in hd
                          for s in gaps if c.startswith(s + ".") or c == s})
            raise InputError(f"bridge has no hook for site(s) {missing}; this model's bridge does not expose them"
                             + (f": {'; '.join(why)}" if why else ""))

    @torch.no_grad()
    def generate(
        self,
        batch: Batch,
        *,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        output_scores: bool = False,
        logits_processor: Sequence[Callable] | None = None,
    ) -> Generation:
        """Generate with HF ``generate`` (KV cache) while bridge hooks stay active.

        Parameters
        ----------
        batch : Batch
        max_new_tokens : int
        do_sample, temperature, top_p, top_k :
            Decoding settings; greedy by default (``top_k=0`` disables top-k).
        seed : int, optional
            Seeds torch's RNG for sampling, restored afterwards.
        output_scores : bool
            Keep the raw per-step logits [B, G, V].
        logits_processor : sequence of callable, optional
            HF ``LogitsProcessor`` s ``(input_ids [B, T+t], scores [B, V]) -> scores`` applied at every step
            (the decoding strategies of :mod:`lvlm_probe.interventions` plug in here).

        Returns
        -------
        Generation
        """
        self.check_batch(batch)
        if max_new_tokens < 1:
            raise InputError("max_new_tokens must be >= 1")
        from transformers import GenerationConfig

        base = getattr(self.hf_model, "generation_config", None)
        cfg = GenerationConfig(**(base.to_dict() if base is not None else {}))
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        eos_list = [eos] if isinstance(eos, int) else list(eos or [])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos_list[0] if eos_list else 0)
        cfg.update(
            max_new_tokens=max_new_tokens, min_new_tokens=None, max_length=None, do_sample=do_sample,
            num_beams=1, pad_token_id=pad, eos_token_id=eos_list or None, return_dict_in_generate=True,
            output_logits=output_scores, output_scores=False,
            temperature=temperature if do_sample else None, top_p=top_p if do_sample else None,
            top_k=(top_k if top_k > 0 else None) if do_sample else None,
            repetition_penalty=None,
        )
        settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
                    "top_p": top_p, "top_k": top_k, "seed": seed}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            extra = {}
            if logits_processor:
                from transformers import LogitsProcessorList

                extra["logits_processor"] = LogitsProcessorList(list(logits_processor))
            out = self.hf_model.generate(input_ids=batch.input_ids, **batch.model_inputs(), generation_config=cfg,
                                         **extra)
        seq = out.sequences
        T = batch.input_ids.shape[1]
        tokens: list[list[int]] = []
        for row in seq[:, T:].tolist():
            n = len(row)
            for k, t in enumerate(row):
                if t in eos_list:
                    n = k + 1
                    break
            tokens.append(row[:n])
        scores = torch.stack([s.float() for s in out.logits], dim=1) if output_scores and out.logits else None
        return self._generation(batch, seq, tokens, scores, settings)

    def generation_from_tokens(self, batch: Batch, tokens: Sequence[Sequence[int]], settings: dict | None = None
                               ) -> Generation:
        """The :class:`Generation` record of given generated tokens, without running the model.

        For analysis of a generation read back from disk: ``sequences`` is the prompt followed by the tokens,
        right-padded with the pad id to the longest, exactly as :meth:`generate` lays it out.

        Parameters
        ----------
        batch : Batch
            The prompt batch (from :meth:`prepare`).
        tokens : sequence of sequence of int
            Generated token ids per item (up to and including EOS when it was produced).
        """
        if len(tokens) != len(batch):
            raise InputError(f"{len(tokens)} token lists for a batch of {len(batch)} items")
        G = max((len(t) for t in tokens), default=0)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos or 0)
        new = torch.full((len(batch), G), pad, dtype=batch.input_ids.dtype)
        for b, t in enumerate(tokens):
            new[b, :len(t)] = torch.as_tensor(list(t), dtype=new.dtype)
        seq = torch.cat([batch.input_ids, new.to(batch.input_ids.device)], dim=1)
        return self._generation(batch, seq, [list(map(int, t)) for t in tokens], None, dict(settings or {}))

    def _stop_at_image_token(self, batch: Batch, seq: torch.Tensor, tokens: list[list[int]], T: int
                             ) -> tuple[list[list[int]], torch.Tensor]:
        """End each generation before a generated image placeholder token: HF's forward would read it as a slot
        for image features, so the generation could not be re-run teacher forced (evidence, lens, attribution)."""
        return _stop_at_image_token_impl(self.image_token_id, self._pad_id(), batch, seq, tokens, T)

    def _generation(self, batch: Batch, seq: torch.Tensor, tokens: list[list[int]], scores: torch.Tensor | None,
                    settings: dict) -> Generation:
        T = batch.input_ids.shape[1]
        tokens, seq = self._stop_at_image_token(batch, seq, tokens, T)
        G = seq.shape[1] - T
        gen_mask = torch.zeros((seq.shape[0], G), dtype=torch.bool, device=seq.device)
        for b, t in enumerate(tokens):
            gen_mask[b, :len(t)] = True
        text = [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        spans = [_token_char_spans(self.tokenizer, t, txt) for t, txt in zip(tokens, text)]
        attn = torch.cat([batch.attention_mask, gen_mask.long()], dim=1)
        return Generation(
            text=text, tokens=tokens, sequences=seq, attention_mask=attn, roles=batch.roles.extend(G, gen_mask),
            prompt_length=T, scores=scores, batch=batch, settings=settings, token_spans=spans,
        )


def _stop_at_image_token_impl(image_token: int, pad: int, batch: Batch, seq: torch.Tensor, tokens: list[list[int]],
                              T: int) -> tuple[list[list[int]], torch.Tensor]:
    cut = {b: t.index(image_token) for b, t in enumerate(tokens) if image_token in t}
    if not cut:
        return tokens, seq
    seq = seq.clone()
    for b, k in cut.items():
        tokens[b] = tokens[b][:k]
        seq[b, T + k:] = pad
    ids = batch.item_ids or [str(b) for b in range(len(tokens))]
    warnings.warn(f"{len(cut)} item(s) generated the image placeholder token ({', '.join(repr(ids[b]) for b in cut)}"
                  f"{'' if len(cut) <= 5 else ', ...'}); each generation ends before it, since a placeholder without "
                  "an image cannot be re-run teacher forced", stacklevel=3)
    return tokens, seq


def _token_char_spans(tokenizer: Any, tokens: list[int], text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each generated token in the decoded ``text`` (empty span for special tokens).

    Decodes growing prefixes, so it holds for any tokenizer whose prefix decodings are prefixes of
    the full decoding (true for word-level, BPE and SentencePiece up to whitespace cleanup).
    """
    spans: list[tuple[int, int]] = []
    prev = 0
    for k in range(len(tokens)):
        cur = tokenizer.decode(tokens[: k + 1], skip_special_tokens=True).strip()
        end = min(len(cur), len(text)) if text.startswith(cur[: len(text)]) else prev
        end = max(end, prev)
        start = prev
        while start < end and text[start].isspace():
            start += 1
        spans.append((start, end))
        prev = end
    return spans

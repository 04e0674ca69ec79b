"""The artifact's typed description (`ArtifactMetadata`), and the readers of formats 1 and 2.

Format 2 (this release) keeps the method settings once, the stored dtype, the AdapterDrop depth,
room for the sources of a fused task, and no path of the machine that wrote it: a dataset is
recorded by its sha256 and its store-relative key (`datasets/<sha256>.jsonl`). Its tensors are
named by site and role (`streamlearn.engine.parts`).

Format 1 (release 0.1.0) held the method settings twice (top level and `method_config`), each
stored dataset's absolute path, and positional tensor names (`adapters.7.down.weight`,
`norms.0.weight`, `layers.0.*` for the top-k copies, `encoder.*`); `tensor_names_v2` maps them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from streamlearn.errors import ArtifactCorrupt
from streamlearn.methods.config import MethodConfig

FORMAT = 2
"""Version of the sidecar layout this release writes."""
DTYPES = ("float32", "float16", "bfloat16")
"""Dtypes an artifact's tensors may be stored in (`--store-dtype`)."""


@dataclass(frozen=True)
class ArtifactMetadata:
    """Everything an artifact's sidecar says about its tensors (the file's sha256 and bytes aside)."""

    method: MethodConfig
    """The method settings, once."""
    labels: tuple[str, ...]
    """Class names, in head order."""
    label_type: str
    """`int` or `str`: the type the dataset's labels had."""
    pair: bool
    """Whether the task takes a text pair."""
    backbone: dict
    """name, fingerprint, layers, hidden, params of the backbone it was trained on."""
    train: dict
    """The resolved training settings (`TrainConfig.to_dict()`)."""
    stored_params: int
    """Parameters stored (equal to those trained)."""
    metrics: dict
    """best_epoch, history, val and test (measured with the stored tensors)."""
    data: dict = field(default_factory=dict)
    """files: split -> {sha256, key (store-relative)}; examples: split -> count."""
    dtype: str = "float32"
    """Dtype of the stored tensors."""
    sources: tuple[dict, ...] = ()
    """A fused task's sources, in order: `{task, sha256, key}` of each source's artifact (key: store-relative)."""
    fusion: dict = field(default_factory=dict)
    """A fused task's stage-1 metrics, mean validation attention per site and source, and pruned sources."""
    created_at: str = ""
    """ISO time of writing."""
    format: int = FORMAT
    """Sidecar layout version it was read from."""

    @property
    def max_length(self) -> int:
        """Tokens per example the task was trained with."""
        return int(self.train["max_length"])

    def to_sidecar(self) -> dict:
        """The JSON content of a format-2 sidecar (write_artifact adds sha256, bytes and file)."""
        out = asdict(self)
        out.update(format=FORMAT, method=self.method.to_dict(), labels=list(self.labels), sources=list(self.sources),
                   trainable_params=self.stored_params)
        return out

    @classmethod
    def from_sidecar(cls, sidecar: dict, where: str = "artifact") -> ArtifactMetadata:
        """Read a format-1 or format-2 sidecar.

        Raises:
            ArtifactCorrupt: an unknown format, or a field missing or out of range.
        """
        version = sidecar.get("format")
        try:
            if version == 1:
                files = {split: {"sha256": f["sha256"], "key": f"datasets/{f['sha256']}.jsonl"}
                         for split, f in sidecar["data"]["files"].items()}
                return cls(method=MethodConfig.from_dict(sidecar["method_config"]), labels=tuple(sidecar["labels"]),
                           label_type=sidecar.get("label_type", "str"), pair=bool(sidecar.get("pair", False)),
                           backbone=sidecar["backbone"], train=sidecar["train_config"],
                           stored_params=int(sidecar["stored_params"]), metrics=sidecar["metrics"],
                           data={"files": files, "examples": sidecar["data"].get("examples", {})},
                           created_at=sidecar.get("created_at", ""), format=1)
            if version == FORMAT:
                if sidecar.get("dtype") not in DTYPES:
                    raise ValueError(f"dtype {sidecar.get('dtype')!r} is not one of {', '.join(DTYPES)}")
                return cls(method=MethodConfig.from_dict(sidecar["method"]), labels=tuple(sidecar["labels"]),
                           label_type=sidecar["label_type"], pair=bool(sidecar["pair"]), backbone=sidecar["backbone"],
                           train=sidecar["train"], stored_params=int(sidecar["stored_params"]),
                           metrics=sidecar["metrics"], data=sidecar.get("data", {}), dtype=sidecar["dtype"],
                           sources=tuple(_source(x) for x in sidecar.get("sources", ())),
                           fusion=dict(sidecar.get("fusion") or {}), created_at=sidecar.get("created_at", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactCorrupt(f"{where}: sidecar field missing or invalid ({exc})") from None
        except Exception as exc:  # InvalidConfig from the method settings
            raise ArtifactCorrupt(f"{where}: sidecar method settings are invalid ({exc})") from None
        raise ArtifactCorrupt(f"{where}: unknown artifact format {version!r} (this release reads 1 and 2)")


def _source(entry) -> dict:
    """One recorded source: task, sha256 and store-relative key, all strings."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("task", "sha256", "key")):
        raise ValueError(f"source {entry!r} needs task, sha256 and key")
    return {"task": entry["task"], "sha256": entry["sha256"], "key": entry["key"]}


_V1_ADAPTER = re.compile(r"^adapters\.(\d+)\.(.+)$")
_V1_NORM = re.compile(r"^norms\.(\d+)\.(.+)$")
_V1_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def tensor_names_v2(tensors: dict, meta: ArtifactMetadata) -> dict:
    """A format-1 artifact's tensors under their format-2 names (format 2 is returned as it is)."""
    if meta.format != 1:
        return tensors
    layers = int(meta.backbone["layers"])
    sites = ("attention", "ffn")
    out = {}
    for name, tensor in tensors.items():
        if match := _V1_ADAPTER.match(name):
            j = int(match[1])
            out[f"layers.{j // 2}.{sites[j % 2]}.adapter.{match[2]}"] = tensor
        elif match := _V1_NORM.match(name):
            j = int(match[1])
            key = "embeddings" if j == 0 else f"layers.{(j - 1) // 2}.{sites[(j - 1) % 2]}"
            out[f"{key}.norm.{match[2]}"] = tensor
        elif match := _V1_LAYER.match(name):
            out[f"layers.{layers - meta.method.top_k + int(match[1])}.copy.{match[2]}"] = tensor
        else:
            out[name] = tensor  # encoder.* and head.* keep their names
    return out

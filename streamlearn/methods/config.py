"""The method settings of one task (`MethodConfig`): frozen, validated, stored with its artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from streamlearn.errors import InvalidConfig

POOLINGS = ("mean", "cls")
"""Head poolings: mask-aware mean over tokens (how all-MiniLM-L6-v2 was trained), or the first token."""


@dataclass(frozen=True)
class MethodConfig:
    """How a task adapts the backbone; stored with its artifact."""

    method: str = "adapter"
    """One of the registered methods (`streamlearn.methods.METHODS`)."""
    adapter_size: int = 64
    """Adapter bottleneck width m (adapter method only)."""
    top_k: int = 1
    """Number of top layers fine-tuned (top-k method only)."""
    sigma: float = 1e-2
    """Standard deviation of the adapters' truncated-normal init."""
    pooling: str = "mean"
    """How the head pools token states: mean or cls."""
    drop_layers: int = 0
    """AdapterDrop N: no per-task parts in the lowest N layers or the embeddings (adapter, layernorm)."""
    fuse_from: str = "all"
    """Fusion sources: `all` (every earlier adapter task on the backbone) or task names, comma-separated."""
    fusion_rank: int = 0
    """Rank R of the low-rank fusion layer (0: full d×d query, key and value)."""
    fusion_top: int = 0
    """Keep only the N sources with the largest mean validation attention (0: keep all)."""

    def __post_init__(self) -> None:
        from streamlearn.methods.registry import METHODS

        if self.method not in METHODS:
            raise InvalidConfig(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 1 <= self.adapter_size <= 8192:
            raise InvalidConfig(f"adapter size {self.adapter_size} must be between 1 and 8192")
        if self.top_k < 1:
            raise InvalidConfig(f"top-k {self.top_k} must be at least 1")
        if not 0 < self.sigma <= 1:
            raise InvalidConfig(f"sigma {self.sigma} must be in (0, 1]")
        if self.pooling not in POOLINGS:
            raise InvalidConfig(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.drop_layers < 0:
            raise InvalidConfig(f"drop-lower {self.drop_layers} must not be negative")
        if self.drop_layers and not METHODS[self.method].drops:
            raise InvalidConfig(f"drop-lower applies to {', '.join(m for m in METHODS if METHODS[m].drops)}, "
                                f"not to {self.method}")

        if self.fusion_rank < 0 or self.fusion_top < 0:
            raise InvalidConfig("fusion rank and fusion top must not be negative")
        if self.method != "fusion" and (self.fusion_rank or self.fusion_top or self.fuse_from != "all"):
            raise InvalidConfig(f"--fuse-from, --fusion-rank and --fusion-top apply to fusion, not to {self.method}")
        if not self.fuse_from.strip():
            raise InvalidConfig("--fuse-from needs 'all' or task names separated by commas")

    @property
    def sources(self) -> tuple[str, ...] | None:
        """The named fusion sources, or None for `all`."""
        if self.fuse_from.strip() == "all":
            return None
        return tuple(dict.fromkeys(n.strip() for n in self.fuse_from.split(",") if n.strip()))

    def to_dict(self) -> dict:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MethodConfig:
        """Build from `to_dict()` output; unknown keys are an error (missing ones take their defaults)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidConfig(f"unknown method settings: {', '.join(sorted(unknown))}")
        return cls(**data)

"""The local read-through cache of objects from a remote store: each dataset or artifact is
downloaded once per machine, verified by its sha256, and kept while the cache stays under its bound.

Entries are named by content (`<sha256><suffix>`), so a hit needs no request to the store and two
tasks that share a dataset share its entry. A download goes to a temporary file, is hashed, and is
renamed into place only when the digest matches; a corrupted or truncated download never becomes an
entry. Past `STREAMLEARN_CACHE_BYTES` the least recently used entries are removed (never the one
just fetched), so one machine holds a bounded working set however many tasks the store holds.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from streamlearn.data import file_sha256
from streamlearn.errors import ArtifactCorrupt, InvalidConfig

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ReadCache:
    """A bounded folder of verified copies."""

    root: Path
    """The cache folder (`STREAMLEARN_CACHE_DIR`, default `$STREAMLEARN_HOME/cache`)."""
    max_bytes: int
    """Total size kept before the least recently used entries go (`STREAMLEARN_CACHE_BYTES`)."""

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise InvalidConfig("STREAMLEARN_CACHE_BYTES must be a positive number of bytes")

    def entry(self, sha256: str, suffix: str = "") -> Path:
        """Where the copy of the content with this digest lives (whether or not it is there)."""
        if not _SHA.fullmatch(sha256):
            raise InvalidConfig(f"{sha256!r} is not a sha256 hex digest")
        return self.root / f"{sha256}{suffix}"

    def cached(self, sha256: str, suffix: str = "") -> Path | None:
        """The entry when present (marked as just used), else None."""
        path = self.entry(sha256, suffix)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def fetch(self, store, key: str, sha256: str, suffix: str = "") -> Path:
        """A local, verified copy of `key` from `store` (an `objectstore` store), downloading on a miss.

        Raises:
            ArtifactCorrupt: the downloaded bytes do not match `sha256` (nothing is kept).
            ObjectMissing, StoreUnavailable, StoreRefused: from the store.
        """
        hit = self.cached(sha256, suffix)
        if hit is not None:
            return hit
        target = self.entry(sha256, suffix)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".fetch.", suffix=".tmp")
        os.close(fd)
        try:
            store.download(key, tmp)
            got = file_sha256(tmp)
            if got != sha256:
                raise ArtifactCorrupt(f"{store.uri(key)}: downloaded sha256 {got[:12]} does not match {sha256[:12]}")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        log.info("cached %s (%d bytes)", store.uri(key), target.stat().st_size)
        self.evict(keep=target)
        return target

    def size(self) -> int:
        """Bytes held now."""
        return sum(p.stat().st_size for p in self._entries())

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used entries until the cache fits its bound; return bytes freed."""
        entries = sorted(self._entries(), key=lambda p: p.stat().st_mtime)
        total, freed = sum(p.stat().st_size for p in entries), 0
        for path in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            total, freed = total - size, freed + size
        return freed

    def _entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")]


def read_cache() -> ReadCache:
    """The cache of this process, from the settings."""
    from streamlearn.settings import get_settings

    settings = get_settings()
    return ReadCache(settings.cache_dir, settings.cache_bytes)

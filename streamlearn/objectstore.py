"""Object I/O of the artifact store: a local folder or an S3-compatible bucket, behind one interface.

`artifacts.py` knows the layout (which key holds what); this module only moves bytes. Both stores
write an object whole or not at all: the folder store writes a temporary file in the target's
folder and renames it (atomic on POSIX), and an S3 PUT is atomic per object (a reader sees the old
object, the new one, or none, never a partial body; the upload is one PUT, never multipart, so an
interrupted upload leaves nothing under the key).

`LocalStore` is here; `S3Store` is in `s3store`, imported only when an `s3://` store is used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from streamlearn.errors import InvalidConfig, StreamlearnError, TransientError
from streamlearn.settings import mask_url

if TYPE_CHECKING:
    from streamlearn.s3store import S3Store

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"


class StoreRefused(StreamlearnError):
    """The object store answered but refused: wrong credentials, no such bucket, access denied."""


class StoreUnavailable(TransientError):
    """The object store did not answer (unreachable, timed out, a 5xx); the worker retries."""


class ObjectMissing(StreamlearnError, FileNotFoundError):
    """No object under that key."""


@dataclass(frozen=True)
class StoredObject:
    """One object found by `list`."""

    key: str
    """Key relative to the store's root, with '/' separators."""
    size: int
    """Bytes."""
    modified: datetime
    """Last write (aware UTC): gc leaves objects younger than its grace period alone."""


class ObjectStore(Protocol):
    """What the artifact store needs from a place that holds objects."""

    url: str
    """Where the store is (a folder, or `s3://bucket/prefix`), for messages."""

    def put_file(self, local: str | Path, key: str) -> None:
        """Store a local file's content under `key`, whole or not at all."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, whole or not at all."""

    def get_bytes(self, key: str) -> bytes:
        """The object's content. Raises ObjectMissing."""

    def download(self, key: str, dest: str | Path) -> None:
        """Copy the object to the local file `dest` (the caller renames it into place)."""

    def exists(self, key: str) -> bool:
        """True when an object is stored under `key`."""

    def touch(self, key: str) -> None:
        """Refresh the object's modification time (a new reference to it protects it from gc)."""

    def delete(self, key: str) -> None:
        """Remove the object (a missing one is fine)."""

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix`."""

    def check(self) -> None:
        """Fail now, with one line, when the store cannot be used (missing bucket, bad credentials)."""

    def uri(self, key: str) -> str:
        """The object's full address, for messages."""


def umask() -> int:
    """This process's umask, read without changing it (Linux: /proc; elsewhere a set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_mode(path: str | Path) -> None:
    """Give a file made by `mkstemp` (always 0600) the mode a plain `open` would: 0666 less the umask.

    A CLI and a worker running as two users of one group can then share a store (umask 002).
    """
    os.chmod(path, 0o666 & ~umask())


class LocalStore:
    """Objects as files under one folder (the embedded mode's `$STREAMLEARN_HOME/artifacts`, or a shared mount).

    Args:
        root: The folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        """The file of a key."""
        return self.root / key

    def put_file(self, local: str | Path, key: str) -> None:
        with open(local, "rb") as src:
            self._write(key, lambda dst: _copy(src, dst))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda dst: dst.write(data))

    def _write(self, key: str, fill) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            share_mode(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.path(key)}: no such file") from None

    def download(self, key: str, dest: str | Path) -> None:
        try:
            with open(self.path(key), "rb") as src, open(dest, "wb") as dst:
                _copy(src, dst)
        except FileNotFoundError:
            raise ObjectMissing(f"{self.path(key)}: no such file") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def touch(self, key: str) -> None:
        os.utime(self.path(key))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        # A prefix is a folder ("tasks/") or the start of a key ("datasets/<sha>"), as on S3.
        top = self.root / prefix if prefix.endswith("/") else (self.root / prefix).parent
        if not top.is_dir():
            return
        for path in sorted(top.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and path.is_file() and not path.name.startswith("."):  # skip writes in flight
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                yield StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def check(self) -> None:
        return None  # a folder is created on first write; write errors name their cause

    def uri(self, key: str) -> str:
        return str(self.path(key))


def _copy(src, dst) -> None:
    while chunk := src.read(1 << 20):
        dst.write(chunk)


def open_store(url: str | Path) -> LocalStore | S3Store:
    """The store at `url`: `s3://bucket/prefix` for S3, anything else a local folder."""
    text = str(url)
    if text.startswith(S3_SCHEME):
        return _s3_store(text)
    if "://" in text and not text.startswith("file://"):
        raise InvalidConfig(f"STREAMLEARN_ARTIFACTS={mask_url(text)!r}: only a folder, file:// or s3:// is supported")
    return LocalStore(text.removeprefix("file://"))


def is_uri(location: str | Path) -> bool:
    """True for an object address (`s3://...`) rather than a local path."""
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def locate(location: str | Path) -> tuple[LocalStore | S3Store, str]:
    """The store and key of an object address: `s3://bucket/a/b` -> (bucket store, `a/b`); a local
    path -> (its folder, its file name)."""
    if is_uri(location):
        bucket, _, key = str(location)[len(S3_SCHEME):].partition("/")
        return _s3_store(f"{S3_SCHEME}{bucket}"), key
    path = Path(location)
    return LocalStore(path.parent), path.name


_s3_stores: dict[tuple, S3Store] = {}
_AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION")


# A forked worker child must not share the parent's HTTP connections: it builds its own clients.
os.register_at_fork(after_in_child=_s3_stores.clear)


def _s3_store(url: str) -> S3Store:
    # One client per bucket and AWS settings per process: a boto3 client costs ~50 ms to build.
    key = (url, *(os.environ.get(name) for name in _AWS_SETTINGS))
    if key not in _s3_stores:
        from streamlearn.s3store import S3Store

        _s3_stores[key] = S3Store(url)
    return _s3_stores[key]

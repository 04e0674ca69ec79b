"""One read of a dataset file: what it is, its lines, its sha256 and (optionally) a copy, in one pass.

A dataset is read exactly once per use. The same bytes are hashed, written to the copy and
decoded into lines, so what is validated, what is hashed and what is stored cannot differ even if
the file is replaced while it is read. Memory stays bounded by the chunk size and the line limit:

- anything that is not a regular file after following symlinks (a directory, `/dev/zero`, a FIFO,
  a socket) is refused before a byte is read; the FIFO check opens with `O_NONBLOCK`, so a FIFO
  without a writer cannot block;
- the raw file is read in chunks of `CHUNK_BYTES`; a `.gz` file is inflated incrementally with
  zlib, never more than `CHUNK_BYTES` of output at a time (multi-member gzip is accepted, as
  `gzip` does);
- the decompressed size is capped (`max_bytes`, `STREAMLEARN_MAX_DATASET_BYTES`) and every line is
  checked against the line limit while it is still being read, so a gzip bomb or a file that is
  one huge line is refused after at most one limit's worth of bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from streamlearn.errors import InvalidDataset

CHUNK_BYTES = 1 << 20
"""Bytes read from the file, and most bytes inflated, at a time."""

DEFAULT_MAX_BYTES = 1 << 30
"""Default cap on a dataset's decompressed size (1 GiB; `STREAMLEARN_MAX_DATASET_BYTES`, `--max-bytes`)."""

_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"


def _kind_of(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a JSONL file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading if, after following symlinks, it is a regular file.

    Raises:
        InvalidDataset: no such file, not a regular file, or not readable.
    """
    try:
        kind = _kind_of(os.stat(path).st_mode)
        if kind is not None:
            raise InvalidDataset(f"{path}: {kind}")
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, the open does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InvalidDataset(f"{path}: no such file") from None
    except PermissionError:
        raise InvalidDataset(f"{path}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise InvalidDataset(f"{path}: cannot be read ({exc.strerror or exc})") from None
    kind = _kind_of(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise InvalidDataset(f"{path}: {kind}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class DatasetFile:
    """One pass over a dataset file: iterate to get its lines; afterwards `sha256` holds its digest.

    Args:
        path: The file (`.gz` is inflated).
        max_line_bytes: Longest line accepted, in decompressed bytes.
        max_bytes: Most decompressed bytes accepted.
        copy_to: Called once the file is open; returns the binary file that receives the raw bytes
            as read (the store's temporary copy), so a file refused before reading gets no copy.
        stream: Read this already open binary stream (standard input) instead of opening `path`,
            which then only names it in messages.
    """

    def __init__(self, path: str | Path, max_line_bytes: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 copy_to: Callable[[], BinaryIO] | None = None, stream: BinaryIO | None = None) -> None:
        self.path = Path(path)
        self.stream = stream
        self.max_line_bytes = max_line_bytes
        self.max_bytes = max_bytes
        self.copy_to = copy_to
        self.sha256: str | None = None
        """Hex sha256 of the raw file bytes, set once the file was read to its end."""
        self.size = 0
        """Decompressed bytes read so far."""

    def _open(self) -> BinaryIO:
        return self.stream if self.stream is not None else open_regular(self.path)

    def _raw_chunks(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        with self._open() as fh:
            copy = self.copy_to() if self.copy_to is not None else None
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
                if copy is not None:
                    copy.write(chunk)
                yield chunk
        self.sha256 = digest.hexdigest()

    def _gunzip(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        inflater: zlib._Decompress | None = None
        started = False
        try:
            for data in chunks:
                while data:
                    if inflater is None:
                        if started and not data.strip(b"\x00"):
                            break  # zero padding after the last member, which gzip also accepts
                        inflater, started = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), True
                    out = inflater.decompress(data, CHUNK_BYTES)
                    if out:
                        yield out
                    if inflater.eof:
                        data = inflater.unused_data + inflater.unconsumed_tail
                        inflater = None
                    else:
                        data = inflater.unconsumed_tail
                while inflater is not None and (out := inflater.decompress(b"", CHUNK_BYTES)):
                    yield out
        except zlib.error as exc:
            raise InvalidDataset(f"{self.path}: not a valid gzip file ({exc})") from None
        if inflater is not None and not inflater.eof:
            raise InvalidDataset(f"{self.path}: not a valid gzip file (it ends before the end of its compressed data)")

    def _decompressed(self) -> Iterator[bytes]:
        chunks = self._raw_chunks()
        if self.stream is None and self.path.name.endswith(".gz"):
            chunks = self._gunzip(chunks)
        for piece in chunks:
            self.size += len(piece)
            if self.size > self.max_bytes:
                where = "decompressed" if self.path.name.endswith(".gz") else "in size"
                raise InvalidDataset(
                    f"{self.path}: over the limit of {self.max_bytes:,} bytes {where} "
                    "(STREAMLEARN_MAX_DATASET_BYTES, --max-bytes)"
                )
            yield piece

    def __iter__(self) -> Iterator[tuple[int, bytes, bool]]:
        """Yield `(line number, line without its newline and CR, is the unterminated last line)`.

        Raises:
            InvalidDataset: not a regular file, not gzip, over the size cap, or a line over the limit.
        """
        pending = bytearray()
        lineno, first = 0, True
        for piece in self._decompressed():
            pending += piece
            if first:
                if len(pending) < len(_BOM) and _BOM.startswith(bytes(pending)):
                    continue
                if pending.startswith(_BOM):
                    del pending[: len(_BOM)]
                first = False
            start = 0
            while (end := pending.find(b"\n", start)) != -1:
                lineno += 1
                yield lineno, self._checked(lineno, pending[start:end]), False
                start = end + 1
            del pending[:start]
            if len(pending) > self.max_line_bytes + 1:  # + 1: a CR before the coming newline
                raise self._too_long(lineno + 1)
        if first and pending.startswith(_BOM):
            del pending[: len(_BOM)]
        if pending:
            yield lineno + 1, self._checked(lineno + 1, pending), True
        if self.size == 0:
            raise InvalidDataset(f"{self.path}: file is empty")

    def _checked(self, lineno: int, line: bytearray) -> bytes:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            raise self._too_long(lineno)
        return bytes(line)

    def _too_long(self, lineno: int) -> InvalidDataset:
        return InvalidDataset(
            f"{self.path}:{lineno}: line is longer than the limit of {self.max_line_bytes:,} bytes (--max-line-bytes)"
        )

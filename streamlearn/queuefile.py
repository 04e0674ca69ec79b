"""The embedded broker's transport: kombu's `filesystem://` with message files written whole or not at all.

kombu's filesystem transport creates a message file under its final name and then writes into it,
while a consumer claims any file with that name by moving it away, without taking the writer's
lock. A worker that polls at the wrong moment therefore reads an empty or half-written file, and
the JSON error that follows stops the Celery worker ("Unrecoverable error: JSONDecodeError"; seen
here when a server published while a worker polled). Here:

- a publisher writes the message to a hidden temporary name (which no consumer matches) and
  renames it to its final name, so a consumer only ever sees complete files;
- a consumer reads under a shared lock and re-reads a file that does not parse yet (a message of
  a publisher that still uses kombu's own transport), and a file that never parses is logged and
  set aside instead of stopping the worker; its job stays queued, and reconcile re-sends it
  (`STREAMLEARN_QUEUED_TIMEOUT`).

`dispatch.celery_config` selects this transport for the embedded broker, for workers and clients.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from queue import Empty
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

READ_TRIES = 20
"""Reads of a claimed message file that does not parse yet, `READ_PAUSE` apart, before it is set aside."""
READ_PAUSE = 0.05


class Channel(filesystem.Channel):
    """The filesystem channel with atomic publishing and patient reading."""

    def _put(self, queue, payload, **kwargs):
        """Write the message to a temporary name, then rename it to the name consumers look for."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temp = os.path.join(self.data_folder_out, f".{name}.tmp")
        try:
            with open(temp, "wb") as fh:
                fh.write(dumps(payload).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
        except OSError as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue):
        """Claim the oldest message of `queue` (a rename, so one consumer gets it) and read it."""
        wanted = f"{queue}.msg"
        processed = self.processed_folder if self.store_processed else tempfile.gettempdir()
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != wanted:
                continue
            try:
                shutil.move(os.path.join(self.data_folder_in, name), processed)
            except OSError:
                continue  # another consumer took it
            path = os.path.join(processed, name)
            payload = self._read(path)
            if payload is None:
                continue
            if not self.store_processed:
                os.remove(path)
            return payload
        raise Empty()

    def _read(self, path: str):
        for _ in range(READ_TRIES):
            try:
                with open(path, "rb") as fh:
                    filesystem.lock(fh, filesystem.LOCK_SH)
                    try:
                        raw = fh.read()
                    finally:
                        filesystem.unlock(fh)
            except OSError as exc:
                raise filesystem.ChannelError(f"Cannot read file {path!r} from queue.") from exc
            try:
                return loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                time.sleep(READ_PAUSE)
        log.error("queue message %s never became valid JSON; set aside (its job is re-sent by reconcile)", path)
        try:
            os.replace(path, path + ".bad")
        except OSError:
            pass
        return None


class Transport(filesystem.Transport):
    """kombu's filesystem transport with `Channel` above."""

    Channel = Channel

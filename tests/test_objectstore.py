"""The artifact store on a real S3-compatible server (moto's server mode on loopback) and on a folder:
whole-or-nothing writes, sha256-verified reads through the bounded cache, one-line refusals."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import torch
from s3_server import moto_server, s3_env  # noqa: F401  (fixtures)

from streamlearn.artifacts import ArtifactStore, read_artifact, write_artifact
from streamlearn.cache import ReadCache
from streamlearn.errors import ArtifactCorrupt
from streamlearn.objectstore import LocalStore, ObjectMissing, StoreRefused, StoreUnavailable, open_store
from streamlearn.s3store import S3Store


def _tensors() -> dict[str, torch.Tensor]:
    return {"head.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "head.bias": torch.ones(3)}


def test_local_store_put_is_whole_or_nothing(tmp_path):
    """A folder-store write that fails midway leaves neither the object nor a temporary file."""
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/b.bin", b"first")

    class Boom(Exception):
        pass

    def failing(dst):
        dst.write(b"half")
        raise Boom

    with pytest.raises(Boom):
        store._write("a/b.bin", failing)
    assert store.get_bytes("a/b.bin") == b"first"
    assert sorted(p.name for p in (tmp_path / "store" / "a").iterdir()) == ["b.bin"]
    assert [o.key for o in store.list("a/")] == ["a/b.bin"] and [o.key for o in store.list("a/b")] == ["a/b.bin"]


def test_open_store_refuses_other_schemes():
    """Only folders, file:// and s3:// are stores; anything else is refused with one line."""
    from streamlearn.errors import InvalidConfig

    assert isinstance(open_store("s3://bucket/p"), S3Store) and isinstance(open_store("file:///tmp/x"), LocalStore)
    with pytest.raises(InvalidConfig, match="only a folder, file:// or s3://"):
        open_store("gs://bucket/p")


def test_s3_artifact_round_trip_reads_through_the_cache(s3_env, tmp_path):
    """An artifact written to S3 is read back verified; the second read comes from the cache, with the server stopped."""
    store = ArtifactStore("s3://streamlearn/store")
    path = store.task_artifact_path("tiny", "job1")
    assert path == "s3://streamlearn/store/tasks/tiny/job1.safetensors"
    info = write_artifact(path, _tensors(), {"method": "adapter"})
    assert s3_env.keys() == ["store/tasks/tiny/job1.json", "store/tasks/tiny/job1.safetensors"]
    tensors, meta = read_artifact(path, info.sha256)
    assert torch.equal(tensors["head.weight"], _tensors()["head.weight"]) and meta["sha256"] == info.sha256
    cached = tmp_path / "cache" / f"{info.sha256}.safetensors"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == info.sha256
    # The sidecar is read from the store every time (it is small and says which copy is current);
    # the tensors come from the cache: a read with the store down fails on the sidecar only.
    s3_env.stop()
    with pytest.raises(StoreUnavailable, match="unavailable during download"):
        read_artifact(path, info.sha256)
    assert cached.read_bytes() == open(cached, "rb").read()


def test_s3_object_changed_after_writing_is_refused(s3_env):
    """Tensors replaced in the bucket after writing fail the sha256 check with the sidecar's digest named."""
    store = ArtifactStore("s3://streamlearn/store")
    path = store.task_artifact_path("tiny", "job2")
    write_artifact(path, _tensors(), {"method": "adapter"})
    other = write_artifact(store.task_artifact_path("tiny", "other"), {"x": torch.zeros(2)}, {"method": "adapter"})
    blob = s3_env.client().get_object(Bucket="streamlearn", Key="store/tasks/tiny/other.safetensors")["Body"].read()
    s3_env.client().put_object(Bucket="streamlearn", Key="store/tasks/tiny/job2.safetensors", Body=blob)
    with pytest.raises(ArtifactCorrupt, match="does not match the sidecar"):
        read_artifact(path)
    assert other.sha256 == hashlib.sha256(blob).hexdigest()


def test_s3_dataset_is_content_addressed_and_downloaded_once(s3_env, tiny_task_files, tmp_path):
    """A dataset goes to datasets/<sha256>.jsonl once; a worker's local copy is verified and reused."""
    store = ArtifactStore("s3://streamlearn/store")
    sha, uri = store.put_dataset(tiny_task_files["train"])
    sha_again, _ = store.put_dataset(tiny_task_files["train"])
    assert sha == sha_again and uri == f"s3://streamlearn/store/datasets/{sha}.jsonl"
    assert s3_env.keys("store/datasets/") == [f"store/datasets/{sha}.jsonl"]
    local = store.dataset_path(sha)
    assert local == tmp_path / "cache" / f"{sha}.jsonl" and local.read_bytes() == tiny_task_files["train"].read_bytes()
    s3_env.stop()
    assert store.dataset_path(sha) == local  # a hit needs no request


def test_cache_keeps_its_bound_by_dropping_the_least_recently_used(s3_env, tmp_path):
    """Past its byte bound the cache removes the oldest-used entries and keeps the one just fetched."""
    store = S3Store("s3://streamlearn/c")
    blobs = {name: os.urandom(1000) for name in ("a", "b", "c")}
    for name, blob in blobs.items():
        store.put_bytes(name, blob)
    cache = ReadCache(tmp_path / "bounded", max_bytes=2500)
    digest = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    cache.fetch(store, "a", digest["a"])
    time.sleep(0.01)
    cache.fetch(store, "b", digest["b"])
    time.sleep(0.01)
    cache.cached(digest["a"])  # a used again: b is now the least recently used
    time.sleep(0.01)
    cache.fetch(store, "c", digest["c"])
    assert sorted(p.name for p in (tmp_path / "bounded").iterdir()) == sorted([digest["a"], digest["c"]])
    assert cache.size() == 2000
    with pytest.raises(ArtifactCorrupt, match="does not match"):
        cache.fetch(store, "a", digest["b"][:63] + "0")
    assert not [p for p in (tmp_path / "bounded").iterdir() if p.name.startswith(".")]


def test_s3_missing_bucket_and_missing_object_have_clear_errors(s3_env):
    """A missing bucket is refused with its name; a missing object is ObjectMissing, not a crash."""
    with pytest.raises(StoreRefused, match="bucket 'no-such-bucket' does not exist"):
        S3Store("s3://no-such-bucket/x").check()
    store = S3Store("s3://streamlearn/store")
    assert not store.exists("nothing/here")
    with pytest.raises(ObjectMissing):
        store.get_bytes("nothing/here")


def test_s3_wrong_credentials_are_refused_without_showing_the_secret(moto_server):  # noqa: F811
    """With credentials enforced, a wrong secret key is refused in one line that names neither key."""
    server = moto_server(auth=True)
    good = server.client()
    good.put_object(Bucket="streamlearn", Key="k", Body=b"x")
    store = S3Store("s3://streamlearn")
    store._client = server.client(secret_key="wrong-secret-value")
    with pytest.raises(StoreRefused) as refused:
        store.check()
    message = str(refused.value)
    assert "refused" in message or "denied" in message
    assert "wrong-secret-value" not in message and server.secret_key not in message and "\n" not in message


def test_s3_store_down_is_transient(moto_server):  # noqa: F811
    """An unreachable store raises StoreUnavailable (a TransientError the worker retries), naming the endpoint."""
    from streamlearn.errors import TransientError

    server = moto_server()
    store = S3Store("s3://streamlearn")
    store._client = server.client()
    server.stop()
    with pytest.raises(StoreUnavailable, match=f"object store {server.endpoint} unavailable") as down:
        store.put_bytes("k", b"x")
    assert isinstance(down.value, TransientError)


def test_settings_keep_an_s3_url_and_read_the_cache_bound(monkeypatch, tmp_path):
    """`STREAMLEARN_ARTIFACTS=s3://...` stays a URL, a folder stays a Path, and a non-positive cache bound is refused."""
    from streamlearn.errors import InvalidConfig
    from streamlearn.settings import load_settings

    monkeypatch.setenv("STREAMLEARN_HOME", str(tmp_path))
    monkeypatch.setenv("STREAMLEARN_ARTIFACTS", "s3://bucket/prefix")
    monkeypatch.setenv("STREAMLEARN_CACHE_BYTES", "12345")
    settings = load_settings()
    assert settings.artifacts == "s3://bucket/prefix" and settings.cache_bytes == 12345
    assert settings.cache_dir == tmp_path / "cache"
    monkeypatch.setenv("STREAMLEARN_ARTIFACTS", "file:///srv/store")
    assert load_settings().artifacts == Path("/srv/store")
    monkeypatch.setenv("STREAMLEARN_CACHE_BYTES", "0")
    with pytest.raises(InvalidConfig, match="STREAMLEARN_CACHE_BYTES"):
        load_settings()


def test_s3_debug_logging_never_shows_the_credentials(s3_env, caplog):
    """With every logger at DEBUG, a write and a read leave neither the access key nor the secret in any record."""
    import logging

    caplog.set_level(logging.DEBUG)
    store = ArtifactStore("s3://streamlearn/logs")
    info = write_artifact(store.task_artifact_path("tiny", "job3"), _tensors(), {"method": "adapter"})
    read_artifact(info.path, info.sha256)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert s3_env.secret_key not in text and s3_env.access_key not in text

"""The S3-compatible object store (`STREAMLEARN_ARTIFACTS=s3://bucket/prefix`): AWS S3, MinIO, or any
store that speaks the S3 API.

S3 goes through boto3, not fsspec/s3fs: boto3 reads the standard AWS settings itself
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_REGION`,
`~/.aws/config`), which is what makes MinIO and other S3-compatible stores work, and it gives the
error codes (`NoSuchBucket`, `InvalidAccessKeyId`, ...) this module turns into one-line reasons;
s3fs would add fsspec and aiobotocore on top of the same botocore for no feature used here.
Credentials never appear in a message: errors name the bucket, the key and the endpoint only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from streamlearn.errors import InvalidConfig, StreamlearnError
from streamlearn.objectstore import S3_SCHEME, ObjectMissing, StoredObject, StoreRefused, StoreUnavailable
from streamlearn.settings import mask_url


class S3Store:
    """Objects in an S3-compatible bucket under a key prefix (`s3://bucket/prefix`).

    Endpoint, region and credentials come from the standard AWS settings, read by boto3.
    Connection errors and 5xx answers become `StoreUnavailable` (retried by the worker with the
    job backoff); refusals (bad credentials, missing bucket, access denied) become `StoreRefused`.

    Args:
        url: `s3://bucket` or `s3://bucket/prefix`.
    """

    def __init__(self, url: str) -> None:
        bucket, _, prefix = url[len(S3_SCHEME):].partition("/")
        if not bucket:
            raise InvalidConfig(f"STREAMLEARN_ARTIFACTS={mask_url(url)!r} names no bucket (use s3://bucket/prefix)")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"{S3_SCHEME}{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self._client = None

    @property
    def client(self):
        """The boto3 client, made on first use (importing boto3 costs ~0.2 s; `tasks` never needs it)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Short timeouts and few in-client retries: the job's own backoff (2 s doubling to 64 s)
            # is the retry policy, and a client must fail fast when the store is down.
            config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"})
            # botocore's DEBUG records carry request headers (the access key id in Authorization):
            # keep them out of a worker started with --loglevel DEBUG.
            for name in ("botocore", "boto3", "s3transfer", "urllib3"):
                logger = logging.getLogger(name)
                logger.setLevel(max(logger.level, logging.INFO))
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    @property
    def endpoint(self) -> str:
        """The endpoint in use (no credentials in it), for messages."""
        return mask_url(str(self.client.meta.endpoint_url))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self._key(key)}"

    def _call(self, what: str, key: str | None, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.uri(key) if key is not None else self.url
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            raise _refusal(exc, what, where, self.endpoint, self.bucket) from None
        except BotoCoreError as exc:
            # EndpointConnectionError, ConnectTimeout, ReadTimeout, a dropped connection, ...; the
            # message of these names the endpoint URL, never the credentials.
            raise StoreUnavailable(f"object store {self.endpoint} unavailable during {what} of {where}: {exc}") from None

    def put_file(self, local: str | Path, key: str) -> None:
        # One PUT (not upload_file, which switches to multipart above 8 MB and could leave parts).
        with open(local, "rb") as fh:
            self._call("upload", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=fh)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("upload", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        answer = self._call("download", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return self._call("download", key, answer["Body"].read)

    def download(self, key: str, dest: str | Path) -> None:
        answer = self._call("download", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        with open(dest, "wb") as fh:
            for chunk in self._call("download", key, answer["Body"].iter_chunks, 1 << 20):
                fh.write(chunk)

    def exists(self, key: str) -> bool:
        try:
            self._call("lookup", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectMissing:
            return False
        return True

    def touch(self, key: str) -> None:
        # A copy onto itself with new metadata is how S3 refreshes LastModified without a download.
        k = self._key(key)
        self._call("touch", key, self.client.copy_object, Bucket=self.bucket, Key=k,
                   CopySource={"Bucket": self.bucket, "Key": k}, MetadataDirective="REPLACE",
                   Metadata={"touched": datetime.now(timezone.utc).isoformat()})

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> Iterator[StoredObject]:
        skip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in self._call("listing", prefix, list, pages):
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"][skip:], int(item["Size"]), item["LastModified"].astimezone(timezone.utc))

    def check(self) -> None:
        self._call("access check", None, self.client.head_bucket, Bucket=self.bucket)


_REFUSED = {
    "InvalidAccessKeyId": "the access key is not known to the store (check AWS_ACCESS_KEY_ID / AWS_PROFILE)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (check AWS_SECRET_ACCESS_KEY / AWS_PROFILE)",
    "AccessDenied": "access denied (the credentials lack permission for this bucket)",
    "403": "access denied (wrong credentials, or no permission for this bucket)",
    "Forbidden": "access denied (wrong credentials, or no permission for this bucket)",
}


def _refusal(exc, what: str, where: str, endpoint: str, bucket: str) -> StreamlearnError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in ("NoSuchKey", "NotFound") or (code == "404" and what != "access check"):
        return ObjectMissing(f"{where}: no such object")
    if code == "NoSuchBucket" or (code == "404" and what == "access check"):
        return StoreRefused(f"object store {endpoint}: bucket {bucket!r} does not exist (create it, or fix STREAMLEARN_ARTIFACTS)")
    if code in _REFUSED:
        return StoreRefused(f"object store {endpoint} refused the {what} of {where}: {_REFUSED[code]}")
    if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"):
        return StoreUnavailable(f"object store {endpoint} unavailable during {what} of {where}: {code or status}")
    return StoreRefused(f"object store {endpoint} refused the {what} of {where}: {code or status} {error.get('Message', '')}".strip())

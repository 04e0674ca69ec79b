"""A real S3-compatible server for the tests: moto's server mode (`moto_server`), a subprocess on a
free loopback port, which a test may kill and start again (its state lives in memory, so a restart
empties it, as a store that lost its data would be).

With `auth=True` the server checks credentials the way S3 does: moto enforces IAM after its first
`INITIAL_NO_AUTH_ACTION_COUNT` requests, which the fixture spends creating one user with an access
key allowed everything on S3, and the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SETUP_ACTIONS = 4
"""Requests `MotoServer` makes before credentials are enforced: user, policy, access key, bucket."""


class MotoServer:
    """One `moto_server` process on 127.0.0.1.

    Args:
        folder: Where its log goes.
        auth: Enforce credentials (see the module docstring).
    """

    def __init__(self, folder: Path, auth: bool = False) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.auth = folder, auth
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key, self.secret_key = "AKIASTREAMLEARNTEST1", "streamlearn-secret-never-printed"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start the server, wait until it answers, and create the user (with `auth`) and the bucket."""
        binary = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        env = {**os.environ}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_ACTIONS)
        log = open(self.folder / f"moto-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server on port {self.port} did not start")
                time.sleep(0.1)
        self._setup()

    def client(self, service: str = "s3", access_key: str | None = None, secret_key: str | None = None):
        """A boto3 client of this server."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key)

    def _setup(self) -> None:
        if self.auth:
            iam = self.client("iam", "setup", "setup")
            iam.create_user(UserName="streamlearn")
            iam.put_user_policy(UserName="streamlearn", PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
            key = iam.create_access_key(UserName="streamlearn")["AccessKey"]
            self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.client().create_bucket(Bucket="streamlearn")

    def env(self, prefix: str = "store") -> dict[str, str]:
        """The settings a streamlearn process needs for this store (`s3://streamlearn/<prefix>`)."""
        return {"STREAMLEARN_ARTIFACTS": f"s3://streamlearn/{prefix}", "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket="streamlearn", Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def stop(self) -> None:
        """Kill the server (SIGKILL: a store that dies, not one that shuts down)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill and start again on the same port; the bucket is created again, empty."""
        self.stop()
        self.start()


@pytest.fixture()
def moto_server(tmp_path: Path) -> Iterator:
    """Factory of moto S3 servers (`moto_server(auth=False)`), killed at teardown."""
    servers: list[MotoServer] = []

    def make(auth: bool = False) -> MotoServer:
        servers.append(MotoServer(tmp_path, auth))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture()
def s3_env(isolated_home, moto_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """This process's settings pointed at a fresh moto S3 store (`s3://streamlearn/store`)."""
    from streamlearn.settings import get_settings

    server = moto_server()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STREAMLEARN_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield server
    get_settings.cache_clear()

"""`streamlearn predict --server URL`: the same answer as in-process, from a running server.

`ServerSession` has the two methods `prediction.answer` uses of an in-process `Session`
(`tasks`, `predict_items`), so the command's output is built by the same function either way.
It imports neither torch nor the server, only httpx.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from streamlearn.api import Prediction
from streamlearn.errors import InvalidConfig, StreamlearnError, UnknownTask

TIMEOUT = 60.0
"""Seconds to wait for the server's answer."""


class ServerError(StreamlearnError):
    """The server could not be reached or failed (its one-line error is kept)."""


class ServerSession:
    """A running `streamlearn serve`, spoken to over HTTP; sends $STREAMLEARN_API_TOKEN when set.

    Args:
        url: The server's base URL, e.g. `http://127.0.0.1:8000`.
    """

    def __init__(self, url: str) -> None:
        token = os.environ.get("STREAMLEARN_API_TOKEN")
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _call(self, method: str, path: str, body: dict | None = None):
        import httpx

        try:
            response = httpx.request(method, self.url + path, json=body, headers=self.headers, timeout=TIMEOUT)
        except httpx.HTTPError as exc:
            raise ServerError(f"server {self.url} unreachable: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            kind = {404: UnknownTask, 422: InvalidConfig}.get(response.status_code, ServerError)
            raise kind(f"server {self.url}: {message}")
        return response.json()

    def tasks(self) -> list[str]:
        """Tasks with a trained artifact, in arrival order."""
        return [row["task"] for row in self._call("GET", "/v1/tasks") if row["uri"] is not None]

    def predict_items(self, items: Sequence[tuple]) -> list[Prediction]:
        """Predict rows of several tasks in one request: each item is (task, text) or (task, text, text_pair)."""
        body = {"items": [{"task": item[0], "text": item[1],
                           **({"text_pair": item[2]} if len(item) > 2 and item[2] is not None else {})}
                          for item in items]}
        results = self._call("POST", "/v1/predict", body)["results"]
        return [Prediction(r["task"], r["label"], r["score"], r["probabilities"]) for r in results]

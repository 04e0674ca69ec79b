"""`streamlearn predict --server URL`: the same answer as in-process, from a running server.

Imports neither torch nor the server; only httpx (and, when every input line has a label, the
scoring function, to print accuracy as the in-process command does).
"""

from __future__ import annotations

import os

from streamlearn.errors import InvalidConfig, StreamlearnError, UnknownTask

TIMEOUT = 60.0
"""Seconds to wait for the server's answer."""


class ServerError(StreamlearnError):
    """The server refused the request or could not be reached (its one-line error is kept)."""


def predict_via_server(server: str, task: str, texts: list[str], input_file: str | None) -> dict:
    """The `predict_rows` dict for `task`, answered by the server at `server`.

    Raises:
        UnknownTask: the server does not know the task.
        InvalidConfig: no input, or the server refused it.
        ServerError: the server is unreachable or failed.
    """
    import httpx

    from streamlearn.data import Example, read_jsonl

    examples = [Example(t, None) for t in texts]
    if input_file is not None:
        examples += read_jsonl(input_file, require_label=False)
    if not examples:
        raise InvalidConfig("nothing to predict: give TEXT arguments or --input FILE.jsonl")
    items = [{"task": task, "text": ex.text, **({"text_pair": ex.text_pair} if ex.text_pair is not None else {})}
             for ex in examples]
    token = os.environ.get("STREAMLEARN_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = server.rstrip("/") + "/v1/predict"
    try:
        response = httpx.post(url, json={"items": items, "probabilities": False}, headers=headers, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise ServerError(f"server {server} unreachable: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        kind = UnknownTask if response.status_code == 404 else InvalidConfig if response.status_code == 422 else ServerError
        raise kind(f"server {server}: {message}")
    results = response.json()["results"]
    out: dict = {"artifact": f"{server.rstrip('/')}#{task}", "predictions": [
        {"text": ex.text, "label": r["label"], "probability": round(r["score"], 6)} for ex, r in zip(examples, results)
    ]}
    if all(ex.label is not None for ex in examples):
        from streamlearn.training import scores

        index = {name: i for i, name in enumerate(sorted({str(ex.label) for ex in examples} | {r["label"] for r in results}))}
        metrics = scores([index[str(ex.label)] for ex in examples], [index[r["label"]] for r in results])
        out.update(accuracy=metrics.accuracy, macro_f1=metrics.macro_f1)
    return out

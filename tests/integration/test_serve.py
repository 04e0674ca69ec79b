"""`streamlearn serve` as a user runs it: a real server process on a free loopback port, beside a real
worker, in embedded mode (SQLite catalogue, filesystem broker), on the tiny BERT; spoken to over
HTTP with httpx.

One server, one worker and four trained tasks are shared by the module (training is most of the
cost); the tests that need other server flags start short-lived servers of their own on the same home.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_rows, write_jsonl

from integration.conftest import FAST_RECOVERY, Workers
from integration.service_helpers import cli_json, closed_port, ended, job_state, run_cli, task_files

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.integration

TRAIN_FLAGS = ("--epochs", "2", "--lr", "1e-2", "--batch-size", "16")
"""Enough for the tiny BERT to learn the tiny task in about a second."""
TEXTS = ["good great fun", "bad awful dull", "the movie was very nice", "it is boring and sad"]
TOKEN = "s3cret-token-for-the-serve-test"


class Server:
    """A `streamlearn serve` subprocess on a free loopback port, its log in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamlearn", "serve", "--port", str(self.port), "--poll-interval", "0.5", *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"streamlearn serve exited {self.proc.returncode}:\n{self.text()}")
            try:
                if httpx.get(self.url + "/v2/health/live", timeout=1, headers=self.auth(env)).status_code in (200, 401):
                    if httpx.get(self.url + "/v2/health/ready", timeout=5, headers=self.auth(env)).status_code in (200, 401):
                        return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"streamlearn serve did not become ready in 90 s:\n{self.text()}")
            time.sleep(0.2)

    @staticmethod
    def auth(env: dict[str, str]) -> dict[str, str]:
        token = env.get("STREAMLEARN_API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def post(self, path: str, body, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60, **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kw)

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"metric {name} not in /metrics")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _pair_rows(n: int, seed: int) -> list[dict]:
    return [{**row, "text_pair": "and it was " + row["text"].split()[-1]} for row in tiny_rows(n, seed)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_backbone_dir):
    """A home with tasks alpha, beta, gamma (single texts) and duo (pairs) trained by a real worker, and a server."""
    root = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    env.update(FAST_RECOVERY, STREAMLEARN_HOME=str(root / "home"), STREAMLEARN_BACKBONE=tiny_backbone_dir,
               STREAMLEARN_DEVICE="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    workers = Workers(root)
    workers.start(env)
    jobs = {}
    for seed, name in enumerate(("alpha", "beta", "gamma"), start=1):
        jobs[name] = cli_json(env, "submit-task", *task_files(root / "data", name, seed=seed), *TRAIN_FLAGS)["job_id"]
    duo = write_jsonl(root / "data" / "duo.jsonl", _pair_rows(64, seed=7))
    jobs["duo"] = cli_json(env, "submit-task", str(duo), *TRAIN_FLAGS)["job_id"]
    for name, job_id in jobs.items():
        state = _wait(env, job_id, workers)
        assert state["status"] == "succeeded", f"{name}: {state['error']}\n{workers.logs()}"
    server = Server(env, root / "serve.log", *SERVER_FLAGS)
    yield {"env": env, "root": root, "workers": workers, "server": server, "jobs": jobs}
    server.stop()
    workers.close()


SERVER_FLAGS: tuple[str, ...] = ()
"""Flags of the shared server (the defaults: the mixed-batch engine backend)."""


def _wait(env, job_id: str, workers, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while not ended(state := job_state(env, job_id)):
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} did not end in {timeout} s: {state}\n{workers.logs()}")
        time.sleep(0.1)
    return state


def _in_process(env, task: str, texts: list[str], artifact: str | None = None) -> list[dict]:
    """What `streamlearn predict TASK TEXT...` (or `--artifact FILE`) prints, computed in this process by its own functions."""
    if artifact is not None:
        from streamlearn.cli.predict import predict_rows

        return predict_rows(artifact, texts, None, env["STREAMLEARN_BACKBONE"])["predictions"]
    import streamlearn
    from streamlearn.prediction import answer

    with streamlearn.open(home=env["STREAMLEARN_HOME"], backbone=env["STREAMLEARN_BACKBONE"], device="cpu") as session:
        return answer(session, task, texts, [])["predictions"]


def _one_line_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and "\n" not in body["error"], body
    return body["error"]


def test_http_predictions_equal_in_process_predict_and_mixed_requests_equal_single_ones(stack):
    """Labels equal `streamlearn predict` in-process and scores agree within 1e-5; a three-task request equals three single-task ones."""
    server, env = stack["server"], stack["env"]
    single = {}
    for task in ("alpha", "beta", "gamma"):
        response = server.post("/v1/predict", {"items": [{"task": task, "text": t} for t in TEXTS]})
        assert response.status_code == 200, response.text
        single[task] = response.json()["results"]
        for got, want in zip(single[task], _in_process(env, task, TEXTS)):
            assert got["task"] == task and got["label"] == want["label"]
            assert abs(got["score"] - want["probability"]) < 1e-5
            assert abs(sum(got["probabilities"].values()) - 1) < 1e-5
    mixed_items = [{"task": task, "text": text} for text in TEXTS for task in ("gamma", "alpha", "beta")]
    mixed = server.post("/v1/predict", {"items": mixed_items}).json()["results"]
    for item, got in zip(mixed_items, mixed):
        want = single[item["task"]][TEXTS.index(item["text"])]
        assert got["label"] == want["label"] and abs(got["score"] - want["score"]) < 1e-5


def test_cli_predict_with_server_equals_in_process(stack):
    """`streamlearn predict --server URL` prints what the in-process command prints."""
    env = stack["env"]
    via = cli_json(env, "predict", "beta,gamma", *TEXTS, "--server", stack["server"].url)["predictions"]
    here = cli_json(env, "predict", "beta,gamma", *TEXTS)["predictions"]
    assert [(p["task"], p["text"], p["label"]) for p in via] == [(p["task"], p["text"], p["label"]) for p in here]
    assert all(abs(a["probability"] - b["probability"]) < 1e-5 for a, b in zip(via, here))


def test_pair_task_serves_pairs_and_refuses_rows_that_disagree(stack):
    """A pair task answers items with text_pair, and a missing text_pair or a pair on a single-text task is a 422."""
    server = stack["server"]
    ok = server.post("/v1/predict", {"items": [{"task": "duo", "text": "good fun", "text_pair": "and it was nice"}]})
    assert ok.status_code == 200 and ok.json()["results"][0]["label"] in ("pos", "neg")
    assert "needs a text_pair" in _one_line_error(server.post("/v1/predict", {"items": [{"task": "duo", "text": "good"}]}), 422)
    wrong = server.post("/v1/predict", {"items": [{"task": "alpha", "text": "good", "text_pair": "bad"}]})
    assert "single text" in _one_line_error(wrong, 422)


def test_classify_returns_every_tasks_result_for_every_text(stack):
    """/v1/classify answers each text with each asked task's result, equal to /v1/predict's."""
    server = stack["server"]
    body = server.post("/v1/classify", {"texts": TEXTS[:2], "tasks": ["alpha", "gamma"]}).json()
    assert body["tasks"] == ["alpha", "gamma"] and len(body["results"]) == 2
    for text, row in zip(TEXTS[:2], body["results"]):
        for task in ("alpha", "gamma"):
            want = server.post("/v1/predict", {"items": [{"task": task, "text": text}]}).json()["results"][0]
            assert row[task]["label"] == want["label"] and abs(row[task]["score"] - want["score"]) < 1e-5
    every = server.post("/v1/classify", {"texts": ["good"], "tasks": "all"}).json()
    assert set(every["tasks"]) >= {"alpha", "beta", "gamma"} and "duo" not in every["tasks"]


def test_kserve_v2_protocol_infers_and_describes_a_task(stack):
    """The Open Inference Protocol answers with the task as the model: infer, metadata, ready, health."""
    server = stack["server"]
    body = {"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
    infer = server.post("/v2/models/alpha/infer", body).json()
    outputs = {o["name"]: o for o in infer["outputs"]}
    want = server.post("/v1/predict", {"items": [{"task": "alpha", "text": t} for t in TEXTS[:2]]}).json()["results"]
    assert infer["model_name"] == "alpha" and infer["id"] == "r1"
    assert outputs["label"]["data"] == [w["label"] for w in want]
    assert outputs["probabilities"]["shape"] == [2, 2]
    meta = server.get("/v2/models/alpha").json()
    assert meta["name"] == "alpha" and sorted(meta["parameters"]["labels"]) == ["neg", "pos"]
    assert server.get("/v2/models/alpha/ready").json() == {"name": "alpha", "ready": True}
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}
    assert "nosuch" in _one_line_error(server.get("/v2/models/nosuch/ready"), 404)


def test_read_endpoints_return_the_json_of_the_cli(stack):
    """/v1/tasks, /v1/tasks/{task}, /v1/jobs, /v1/jobs/{id} and /v1/storage equal the CLI's --json."""
    server, env = stack["server"], stack["env"]
    assert server.get("/v1/tasks").json() == cli_json(env, "tasks")
    assert server.get("/v1/tasks/alpha").json() == [r for r in cli_json(env, "tasks") if r["task"] == "alpha"][0]
    assert server.get("/v1/storage").json() == cli_json(env, "storage")
    jobs = server.get("/v1/jobs", params={"status": "succeeded"}).json()
    assert {j["job_id"] for j in jobs} >= set(stack["jobs"].values())
    job_id = stack["jobs"]["beta"]
    assert server.get(f"/v1/jobs/{job_id}").json() == cli_json(env, "status", job_id)
    assert "nosuch" in _one_line_error(server.get("/v1/tasks/nosuch"), 404)
    _one_line_error(server.get("/v1/jobs/ffffffffffff"), 404)


def test_metrics_and_openapi_describe_the_server(stack):
    """/metrics is Prometheus text with requests, errors, latency, batch sizes and residency; /openapi.json lists the endpoints."""
    server = stack["server"]
    server.post("/v1/predict", {"items": [{"task": "alpha", "text": "good"}]})
    text = server.get("/metrics").text
    for name in ("streamlearn_requests_total", "streamlearn_errors_total", "streamlearn_request_seconds_bucket",
                 "streamlearn_batch_rows_bucket", "streamlearn_resident_tasks", "streamlearn_resident_bytes"):
        assert name in text, name
    assert 'route="/v1/predict"' in text
    assert server.metric("streamlearn_resident_tasks") >= 1 and server.metric("streamlearn_resident_bytes") > 0
    paths = server.get("/openapi.json").json()["paths"]
    for path in ("/v1/predict", "/v1/classify", "/v1/tasks", "/v1/tasks/{task}", "/v1/jobs", "/v1/jobs/{job_id}",
                 "/v1/storage", "/v2/models/{task}/infer", "/v2/models/{task}", "/v2/health/ready"):
        assert path in paths, path
    assert "post" in paths["/v1/tasks"]
    _one_line_error(server.get("/docs"), 404)


def test_bad_requests_get_their_status_and_a_one_line_error(stack):
    """Unknown task 404, malformed JSON and wrong types 422, too many items and too large a body 413."""
    server = stack["server"]
    assert "nosuch" in _one_line_error(server.post("/v1/predict", {"items": [{"task": "nosuch", "text": "x"}]}), 404)
    broken = httpx.post(server.url + "/v1/predict", content=b'{"items": [', timeout=10,
                        headers={"Content-Type": "application/json"})
    assert "JSON" in _one_line_error(broken, 422)
    assert "text" in _one_line_error(server.post("/v1/predict", {"items": [{"task": "alpha", "text": 5}]}), 422)
    assert "items" in _one_line_error(server.post("/v1/predict", {"items": "alpha"}), 422)
    _one_line_error(server.post("/v1/predict", {"items": [{"task": "alpha", "text": ""}]}), 422)
    many = {"items": [{"task": "alpha", "text": "a"}] * 1025}
    assert "1,025 items" in _one_line_error(server.post("/v1/predict", many), 413)
    huge = {"items": [{"task": "alpha", "text": "good " * 300_000}]}
    assert "byte limit" in _one_line_error(server.post("/v1/predict", huge), 413)
    assert server.post("/v1/predict", {"items": [{"task": "alpha", "text": "good"}]}).status_code == 200


def test_bad_upload_is_422_with_the_cli_message_and_nothing_stored_or_queued(stack):
    """A dataset with a bad line gets the CLI's FILE:LINE: field message, and no job, task or stored file appears."""
    server, env, root = stack["server"], stack["env"], stack["root"]
    bad = root / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n', encoding="utf-8")
    cli = run_cli(env, "submit-task", str(bad))
    assert cli.returncode == 2
    jobs_before = server.get("/v1/jobs").json()
    stored = sorted((Path(env["STREAMLEARN_HOME"]) / "artifacts" / "datasets").iterdir())
    with bad.open("rb") as f:
        response = httpx.post(server.url + "/v1/tasks", files={"train": ("bad.jsonl", f)}, data={"epochs": "1"},
                              timeout=30)
    message = _one_line_error(response, 422)
    assert message == cli.stderr.strip().removeprefix("error: ").replace(str(root) + "/", "")
    assert message.startswith("bad.jsonl:2: ")
    assert server.get("/v1/jobs").json() == jobs_before
    assert sorted((Path(env["STREAMLEARN_HOME"]) / "artifacts" / "datasets").iterdir()) == stored
    assert "bad" not in [t["task"] for t in server.get("/v1/tasks").json()]
    bad_flag = httpx.post(server.url + "/v1/tasks", files={"train": ("x.jsonl", b'{"text":"a","label":"b"}\n')},
                          data={"epochs": "0"}, timeout=30)
    assert "epochs" in _one_line_error(bad_flag, 422)
    path_field = httpx.post(server.url + "/v1/tasks", files={"train": ("x.jsonl", b"{}\n")},
                            data={"validation": "/etc/passwd"}, timeout=30)
    _one_line_error(path_field, 422)


def test_task_submitted_over_http_is_served_within_5_s_of_its_job_succeeding(stack):
    """A task submitted to the running server (multipart) is answered within 5 s of its job's success, without a restart."""
    server, env, root = stack["server"], stack["env"], stack["root"]
    args = task_files(root / "late", "delta", seed=11)
    files = {"train": ("delta.jsonl", Path(args[0]).read_bytes()),
             "validation": ("delta.validation.jsonl", Path(args[2]).read_bytes())}
    fields = {"epochs": "2", "lr": "1e-2", "batch_size": "16"}
    response = httpx.post(server.url + "/v1/tasks", files=files, data=fields, timeout=60)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["task"] == "delta" and job["status"] in ("queued", "running") and job["created"] is True
    assert _one_line_error(server.post("/v1/predict", {"items": [{"task": "delta", "text": "good"}]}), 404)
    state = _wait(env, job["job_id"], stack["workers"])
    assert state["status"] == "succeeded", state["error"]
    succeeded = time.monotonic()
    while (answer := server.post("/v1/predict", {"items": [{"task": "delta", "text": "good"}]})).status_code != 200:
        assert time.monotonic() - succeeded < 5, answer.text
        time.sleep(0.05)
    assert time.monotonic() - succeeded < 5
    assert answer.json()["results"][0]["label"] == _in_process(env, "delta", ["good"])[0]["label"]


def test_force_retrain_switches_atomically_under_concurrent_requests(stack):
    """While a --force retrain lands, every concurrent answer is wholly the old or wholly the new artifact's, and the new one wins."""
    server, env, root = stack["server"], stack["env"], stack["root"]
    old_artifact = job_state(env, stack["jobs"]["gamma"])["artifact"]["uri"]
    old = _in_process(env, "gamma", TEXTS[:2], artifact=str(Path(env["STREAMLEARN_HOME"]) / "artifacts" / old_artifact))
    items = {"items": [{"task": "gamma", "text": t} for t in TEXTS[:2]]}
    seen, stop = [], threading.Event()

    def hammer():
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                seen.append(client.post(server.url + "/v1/predict", json=items).json()["results"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        args = task_files(root / "data", "gamma", seed=3)
        again = cli_json(env, "submit-task", *args, *TRAIN_FLAGS[:2], "--lr", "2e-2", "--batch-size", "8",
                         "--seed", "5", "--force")
        state = _wait(env, again["job_id"], stack["workers"])
        assert state["status"] == "succeeded", state["error"]
        new_path = str(Path(env["STREAMLEARN_HOME"]) / "artifacts" / state["artifact"]["uri"])
        new = _in_process(env, "gamma", TEXTS[:2], artifact=new_path)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (seen and _same(seen[-1], new)):
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not _same(old, new), "the retrain should change the scores"
    assert seen and all(_same(r, old) or _same(r, new) for r in seen), "an answer mixed two artifacts"
    assert _same(seen[-1], new) and any(_same(r, old) for r in seen)


def _same(a: list[dict], b: list[dict]) -> bool:
    """Two answers agree: labels equal, scores within 1e-5 (a server result or a `predict` row each)."""
    score = lambda row: row["score"] if "score" in row else row["probability"]  # noqa: E731
    return len(a) == len(b) and all(x["label"] == y["label"] and abs(score(x) - score(y)) < 1e-5 for x, y in zip(a, b))


def test_tampered_artifact_fails_its_task_only(stack):
    """A task whose artifact no longer matches its sha256 answers 503 naming the reason; the other tasks keep serving."""
    server, env, root = stack["server"], stack["env"], stack["root"]
    job_id = cli_json(env, "submit-task", *task_files(root / "data", "epsilon", seed=9), *TRAIN_FLAGS)["job_id"]
    state = _wait(env, job_id, stack["workers"])
    assert state["status"] == "succeeded", state["error"]
    path = Path(env["STREAMLEARN_HOME"]) / "artifacts" / state["artifact"]["uri"]
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    message = _one_line_error(server.post("/v1/predict", {"items": [{"task": "epsilon", "text": "good"}]}), 503)
    assert "epsilon" in message and "sha256" in message and str(root) not in message
    healthy = server.post("/v1/predict", {"items": [{"task": "alpha", "text": "good"}, {"task": "beta", "text": "bad"}]})
    assert healthy.status_code == 200
    mixed = server.post("/v1/predict", {"items": [{"task": "alpha", "text": "good"}, {"task": "epsilon", "text": "x"}]})
    assert "items[1]" in _one_line_error(mixed, 503)


@pytest.fixture(scope="module")
def guarded(stack):
    """A second server on the same home: token required, switch backend, a budget of 2.5 tasks, alpha pinned."""
    probe = stack["server"]
    probe.post("/v1/predict", {"items": [{"task": t, "text": "good"} for t in ("alpha", "beta", "gamma")]})
    per_task = int(probe.metric("streamlearn_resident_bytes") / probe.metric("streamlearn_resident_tasks"))
    budget = per_task * 5 // 2
    env = {**stack["env"], "STREAMLEARN_API_TOKEN": TOKEN}
    server = Server(env, stack["root"] / "guarded.log", "--backend", "switch", "--memory-budget", str(budget),
                    "--pin", "alpha", "--log-level", "debug")
    yield server, budget
    server.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_eviction_under_a_small_memory_budget_keeps_answers_correct_and_bytes_within_it(stack, guarded):
    """With a budget of two and a half tasks, cycling over three tasks evicts, answers stay right, resident bytes stay under the budget."""
    server, budget = guarded
    probe = stack["server"]

    def ask(srv, task, **kw):
        body = {"items": [{"task": task, "text": x} for x in TEXTS]}
        return srv.post("/v1/predict", body, **kw).json()["results"]

    def metric(name):
        line = next(x for x in server.get("/metrics", headers=AUTH).text.splitlines() if x.startswith(name + " "))
        return float(line.split()[1])

    want = {t: ask(probe, t) for t in ("alpha", "beta", "gamma")}
    for task in ("beta", "gamma", "beta", "alpha", "gamma", "beta"):
        got = ask(server, task, headers=AUTH)
        assert [g["label"] for g in got] == [w["label"] for w in want[task]]
        assert all(abs(g["score"] - w["score"]) < 1e-5 for g, w in zip(got, want[task]))
        assert 0 < metric("streamlearn_resident_bytes") <= budget
    assert metric("streamlearn_evictions") >= 3
    mixed = server.post("/v1/predict", {"items": [{"task": t, "text": "good"} for t in ("beta", "gamma", "alpha")]},
                        headers=AUTH)
    assert mixed.status_code == 200 and metric("streamlearn_resident_bytes") <= budget
    assert "evicted" in server.text()


def test_non_loopback_bind_without_token_refuses_to_start(stack):
    """`serve --host 0.0.0.0` without STREAMLEARN_API_TOKEN exits 2 saying why, before binding anything."""
    result = run_cli(stack["env"], "serve", "--host", "0.0.0.0", "--port", str(closed_port()), timeout=60)
    assert result.returncode == 2
    assert "STREAMLEARN_API_TOKEN" in result.stderr and "0.0.0.0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_token_is_required_when_set_and_never_logged(guarded):
    """With a token, no header or a wrong one gets 401, the right one 200, and the token is not in the server log."""
    server, _ = guarded
    body = {"items": [{"task": "alpha", "text": "good"}]}
    assert "token" in _one_line_error(server.post("/v1/predict", body), 401)
    assert "token" in _one_line_error(server.post("/v1/predict", body, headers={"Authorization": "Bearer nope"}), 401)
    _one_line_error(server.get("/v1/tasks", headers={"Authorization": TOKEN}), 401)
    _one_line_error(server.get("/metrics"), 401)
    assert server.post("/v1/predict", body, headers=AUTH).status_code == 200
    assert server.get("/v1/tasks", headers=AUTH).status_code == 200
    log = server.text()
    assert "POST /v1/predict" in log and TOKEN not in log

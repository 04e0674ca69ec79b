"""The dashboard in a real headless Chromium, against a real `streamlearn serve` beside a real worker.

One home is shared by the module: a server with an API token on a free loopback port and a
worker; tasks alpha and beta (learnable) and flat (every text the same, so its run collapses to
one label) are submitted over HTTP one after another, each re-scored over HTTP (`POST
/v1/evaluate`) once learned. The browser is Debian's Chromium driven by Selenium
through /usr/bin/chromedriver. A failing page test saves a screenshot under its tmp path and
prints where.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import tiny_rows

from integration.conftest import FAST_RECOVERY, Workers
from integration.service_helpers import cli_json, closed_port, ended, job_state, run_cli, task_files

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "dashboard-test-token-0123456789"
TRAIN_FLAGS = {"epochs": "8", "lr": "1e-2", "batch_size": "16"}
"""Enough for the tiny BERT to learn the tiny task in a few seconds (the form fields of POST /v1/tasks)."""
PHONE = (390, 844)
DESKTOP = (1280, 800)


def _browser_available() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (the dev extra)")
    if missing:
        reason = f"headless browser tests need {', '.join(missing)}; .ci/run installs them"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: they must run)")
        pytest.skip(reason)


def _driver(size: tuple[int, int] = DESKTOP):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


class Server:
    """`streamlearn serve` on a free loopback port with an API token; its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        import httpx

        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamlearn", "serve", "--port", str(self.port), "--poll-interval", "0.5"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"streamlearn serve exited {self.proc.returncode}:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2, headers=self.auth).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"streamlearn serve was not ready in 120 s:\n{log.read_text(errors='replace')}")
            time.sleep(0.3)

    auth = {"Authorization": f"Bearer {TOKEN}"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _learn(server: Server, workers: Workers, env: dict[str, str], name: str, rows: dict[str, list[dict]],
           **extra: str) -> str:
    """Submit a task over HTTP (`extra`: more form fields), wait until it succeeds, then re-score every task over HTTP."""
    import httpx

    files = {part: (f"{name}.{part}.jsonl", "".join(json.dumps(r) + "\n" for r in part_rows))
             for part, part_rows in rows.items()}
    fields = {"name": name, **TRAIN_FLAGS, **extra}
    submitted = httpx.post(server.url + "/v1/tasks", files=files, data=fields, headers=server.auth, timeout=60)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 180
    while not ended(state := job_state(env, job_id)):
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} did not end: {state}\n{workers.logs()}")
        time.sleep(0.2)
    assert state["status"] == "succeeded", f"{state['error']}\n{workers.logs()}"
    rescored = httpx.post(server.url + "/v1/evaluate", json={}, headers=server.auth, timeout=120)
    assert rescored.status_code == 200, rescored.text
    assert [r["drift"] for r in rescored.json()["results"]] == [0.0] * len(rescored.json()["results"])
    return job_id


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_backbone_dir) -> Iterator[dict]:
    """A server with a token and a worker; alpha, beta and flat learned one after another, re-scored after each."""
    _browser_available()
    pytest.importorskip("httpx")
    root = tmp_path_factory.mktemp("dashboard")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    env.update(FAST_RECOVERY, STREAMLEARN_HOME=str(root / "home"), STREAMLEARN_BACKBONE=tiny_backbone_dir,
               STREAMLEARN_DEVICE="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               STREAMLEARN_API_TOKEN=TOKEN)
    workers = Workers(root)
    workers.start(env)
    server = None
    try:
        server = Server(env, root / "serve.log")
        for seed, name in enumerate(("alpha", "beta"), start=1):
            _learn(server, workers, env, name, {"train": tiny_rows(64, seed), "validation": tiny_rows(16, seed + 100),
                                                "test": tiny_rows(16, seed + 200)})
        # Every text is the same, so every prediction is the same label: a collapsed run.
        flat = [{"text": "the movie", "label": label} for label in ("pos", "neg") * 16]
        _learn(server, workers, env, "flat", {"train": flat, "validation": flat[:8], "test": flat[:8]})
        yield {"env": env, "root": root, "server": server, "workers": workers}
    finally:
        if server is not None:
            server.stop()
        workers.close()


@pytest.fixture(scope="module")
def browser(stack) -> Iterator:
    """A headless Chromium signed in to the stack's server (its session cookie set)."""
    driver = _driver()
    try:
        driver.get(stack["server"].url + "/dashboard/login")
        driver.find_element("id", "token").send_keys(TOKEN)
        driver.find_element("css selector", "form button").click()
        _wait_ready(driver)
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def page(browser, stack, tmp_path, request) -> Iterator:
    """The signed-in browser on a freshly loaded dashboard; on failure a screenshot is saved and its path printed."""
    browser.set_window_size(*DESKTOP)
    browser.get(stack["server"].url + "/")
    _wait_ready(browser)
    with _screenshot_on_failure(browser, tmp_path, request.node.name):
        yield browser


@contextmanager
def _screenshot_on_failure(driver, folder: Path, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shot = folder / f"{name}.png"
        driver.save_screenshot(str(shot))
        print(f"\nscreenshot of the failing page: {shot}")
        raise


def _wait_ready(driver, timeout: float = 30) -> None:
    _until(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), timeout, "the page to load")


def _until(driver, condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _text(driver, css: str) -> str:
    return driver.find_element("css selector", css).text


def _value(driver, css: str) -> float | None:
    raw = driver.find_element("css selector", css).get_attribute("data-value")
    return float(raw) if raw not in (None, "") else None


def test_page_refuses_without_the_token_and_signs_in_with_it(stack, tmp_path):
    """Without the token `/` is a 401 sign-in form and the API is 401; a wrong token is refused, the right one shows the stream."""
    import httpx

    url = stack["server"].url
    refused = httpx.get(url + "/", timeout=10)
    assert refused.status_code == 401 and 'name="token"' in refused.text and "alpha" not in refused.text
    assert httpx.get(url + "/v1/evaluations/matrix", timeout=10).status_code == 401
    driver = _driver()
    try:
        with _screenshot_on_failure(driver, tmp_path, "sign-in"):
            driver.get(url + "/")
            driver.find_element("id", "token").send_keys("not-the-token")
            driver.find_element("css selector", "form button").click()
            assert "not this server's API token" in driver.find_element("tag name", "body").text
            driver.find_element("id", "token").send_keys(TOKEN)
            driver.find_element("css selector", "form button").click()
            _wait_ready(driver)
            cookie = driver.get_cookie("streamlearn_session")
            assert cookie["httpOnly"] and cookie["value"] != TOKEN
            assert [r.get_attribute("data-task") for r in driver.find_elements("css selector", "#stream tbody tr")] == \
                ["alpha", "beta", "flat"]
    finally:
        driver.quit()
    assert TOKEN not in (stack["root"] / "serve.log").read_text(errors="replace")


def test_stream_table_shows_the_catalogues_accuracies_and_bytes(page, stack):
    """Each task's row holds exactly the catalogue's status, method, validation/test accuracy, trained params and bytes."""
    rows = cli_json(stack["env"], "tasks")
    shown = page.find_elements("css selector", "#stream tbody tr")
    assert [r.get_attribute("data-task") for r in shown] == [r["task"] for r in rows]
    for row in rows:
        base = f'#stream tr[data-task="{row["task"]}"] td'
        assert _text(page, base + '[data-field="status"]') == row["status"] == "succeeded"
        assert _text(page, base + '[data-field="method"]') == row["method"]
        assert _text(page, base + '[data-field="hyperparameters"]') == row["settings"] == "m=64 lr=1e-2 ep=8"
        for field in ("val_accuracy", "test_accuracy", "trainable_params", "bytes"):
            assert _value(page, base + f'[data-field="{field}"]') == row[field], field
        assert _text(page, base + '[data-field="bytes"]') == f"{row['bytes']:,}"
        assert _text(page, base + '[data-field="test_accuracy"]') == f"{row['test_accuracy']:.4f}"


def test_storage_curve_states_the_numbers_of_streamlearn_storage(page, stack):
    """The ratio line and the three SVG series carry the same bytes as `streamlearn storage --json`."""
    report = cli_json(stack["env"], "storage")
    assert _value(page, "#storage-total") == report["total_bytes"]
    assert _value(page, "#storage-full") == report["full_copy_total_bytes"]
    assert _value(page, "#storage-percent") == report["ratio"]
    assert f"{100 * report['ratio']:.2f}%" in _text(page, "#storage-ratio")
    for series, key in (("measured", "cumulative_bytes"), ("law", "theoretical_bytes"),
                        ("full", "full_copy_cumulative_bytes")):
        points = page.find_elements("css selector", f'#storage-chart circle[data-series="{series}"]')
        assert [float(p.get_attribute("data-value")) for p in points] == [t[key] for t in report["tasks"]], series


def test_heatmap_has_one_cell_per_recorded_entry_and_flags_the_collapsed_task(page, stack):
    """The heatmap shows exactly the non-empty cells of `evaluate --matrix --json`, its BWT and forgetting, and warns on flat."""
    result = cli_json(stack["env"], "evaluate", "--matrix")
    recorded = {(t, j): v for t, row in enumerate(result["matrix"]) for j, v in enumerate(row) if v is not None}
    assert len(recorded) == 6  # three tasks, re-scored after each: the lower triangle
    assert [r["source"] for r in result["latest"]] == ["http"] * 3  # recorded by POST /v1/evaluate
    cells = page.find_elements("css selector", "#heatmap td.cell[data-value]")
    shown = {(int(c.get_attribute("data-t")), int(c.get_attribute("data-j"))): float(c.get_attribute("data-value"))
             for c in cells}
    assert shown == recorded
    assert _value(page, "#bwt") == result["bwt"] == 0.0
    assert _value(page, "#forgetting") == result["forgetting"] == 0.0
    # flat cannot but collapse; a tiny task may too (its seed decides), and then the page must say so as well.
    assert "flat" in result["collapsed"]
    warnings = page.find_elements("css selector", "#collapsed li")
    assert [w.get_attribute("data-task") for w in warnings] == result["collapsed"]
    flat = next(w for w in warnings if w.get_attribute("data-task") == "flat")
    assert "1 label predicted" in flat.text and "majority class 0.5000" in flat.text


def test_try_it_box_shows_the_same_label_as_streamlearn_predict(page, stack):
    """A text classified by alpha and beta on the page gets the labels `streamlearn predict` prints for it."""
    text = "good great fun and the plot was nice"
    page.find_element("id", "try-text").send_keys(text)
    for box in page.find_elements("css selector", "#try-tasks input"):
        if (box.get_attribute("value") == "flat") == box.is_selected():
            box.click()  # alpha and beta checked, flat not
    page.find_element("css selector", "#try button").click()
    _until(page, lambda d: len(d.find_elements("css selector", "#try-results tr")) == 2, 30, "two results")
    # The two CLI processes side by side: each loads torch and the backbone, the slow part.
    with ThreadPoolExecutor(2) as pool:
        expected = dict(zip(("alpha", "beta"), pool.map(lambda t: cli_json(stack["env"], "predict", t, text),
                                                        ("alpha", "beta"))))
    for task, printed in expected.items():
        [want] = printed["predictions"]
        assert _text(page, f'#try-results tr[data-task="{task}"] td[data-field="label"]') == want["label"]
        assert abs(_value(page, f'#try-results tr[data-task="{task}"] td[data-field="score"]') - want["probability"]) < 1e-5


def test_bad_upload_shows_the_clis_one_line_error_and_queues_nothing(page, stack):
    """A file with a line missing its label shows the CLI's `error: FILE:LINE: field ...` line; no job or task is added."""
    env, folder = stack["env"], stack["root"] / "bad"
    folder.mkdir(exist_ok=True)
    bad = folder / "broken.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n{"text": "fine", "label": "neg"}\n')
    before_jobs, before_tasks = cli_json(env, "jobs"), cli_json(env, "tasks")
    cli = run_cli(env, "submit-task", str(bad))
    assert cli.returncode == 2
    cli_line = cli.stderr.strip().replace(str(bad), bad.name)
    page.find_element("id", "submit-train").send_keys(str(bad))
    page.find_element("css selector", "#submit button").click()
    shown = _until(page, lambda d: d.find_element("id", "submit-error").text, 30, "the upload's error")
    assert shown == cli_line and shown.startswith("error: broken.jsonl:2: field 'label'")
    assert cli_json(env, "jobs") == before_jobs and cli_json(env, "tasks") == before_tasks


def test_layout_is_usable_at_1280x800_and_at_phone_width(page):
    """At both sizes the page never scrolls sideways, every section fits the width, and the try-it button is reachable."""
    for width, height in (DESKTOP, PHONE):
        page.set_window_size(width, height)
        time.sleep(0.3)
        inner = page.execute_script("return document.documentElement.clientWidth")
        assert page.execute_script("return document.documentElement.scrollWidth") <= inner, (width, height)
        for section in page.find_elements("css selector", "main > section"):
            rect = section.rect
            assert rect["x"] >= 0 and rect["x"] + rect["width"] <= inner + 1, (width, section.get_attribute("id"))
        button = page.find_element("css selector", "#try button")
        assert button.is_displayed() and button.size["width"] > 0


def test_fusion_section_shows_a_fused_tasks_attention_as_the_api_reports_it(page, stack):
    """A fused task learned over the earlier adapters gets a heatmap whose cells are GET /v1/tasks/{task}/fusion's attention."""
    import httpx

    server = stack["server"]
    assert page.find_element("id", "fusion-section").get_attribute("hidden") is not None  # no fused task yet
    _learn(server, stack["workers"], stack["env"], "fused", {"train": tiny_rows(64, 7), "validation": tiny_rows(16, 107),
                                                             "test": tiny_rows(16, 207)}, method="fusion")
    page.get(server.url + "/")
    _wait_ready(page)
    _until(page, lambda d: d.execute_script("return document.getElementById('fusion-heatmap').dataset.task === 'fused'"),
           30, "the fusion heatmap")
    attention = httpx.get(server.url + "/v1/tasks/fused/fusion", headers=server.auth, timeout=30).json()["attention"]
    assert attention["sources"] == ["self", "alpha", "beta", "flat"]
    expected = {(site, source): value for site, row in zip(attention["sites"], attention["mean"])
                for source, value in zip(attention["sources"], row) if value is not None}
    cells = page.find_elements("css selector", "#fusion-heatmap td.cell[data-value]")
    shown = {(c.get_attribute("data-site"), c.get_attribute("data-source")): float(c.get_attribute("data-value")) for c in cells}
    assert shown == expected and len(shown) == 4 * len(attention["sites"])
    assert page.find_element("id", "fusion-section").get_attribute("hidden") is None


def test_a_job_submitted_on_the_page_shows_progress_that_advances_without_reloading(page, stack):
    """The submit form queues a long job; its row's step rises over successive polls while the page is never reloaded."""
    folder = stack["root"] / "long"
    args = task_files(folder, "long", seed=40, train_rows=128)
    page.execute_script("window.__loaded_once = true;")
    page.find_element("id", "submit-train").send_keys(args[0])
    page.find_element("id", "submit-name").send_keys("long")
    epochs = page.find_element("id", "submit-epochs")
    epochs.clear()
    epochs.send_keys("300")
    page.find_element("css selector", "#submit button").click()
    job_id = _until(page, lambda d: d.find_element("id", "submit-result").get_attribute("data-job"), 30, "the job id")
    assert job_state(stack["env"], job_id)["task"] == "long"
    row = f'#jobs tr[data-job="{job_id}"]'

    def read(d, css, script):
        # One script reads the live element: the table is re-rendered on every poll, so an element
        # found by one WebDriver call may be stale by the next.
        return d.execute_script(f"const e = document.querySelector(arguments[0]); return e ? {script} : null;", css)

    def step(d):
        raw = read(d, row, "(e.dataset.step || '')")
        return int(raw) if raw else 0

    first = _until(page, step, 120, "the job to report a step")
    later = _until(page, lambda d: step(d) > first and step(d), 60, "the step to advance")
    assert later > first
    assert read(page, row + ' td[data-field="status"]', "e.textContent.trim()") in ("running", "succeeded")
    assert page.execute_script("return window.__loaded_once === true")  # the same document: no reload
    assert 0 < int(read(page, row + " .bar", "e.getAttribute('aria-valuenow')")) <= 100
    assert job_state(stack["env"], job_id)["progress"]["step"] >= later  # the page showed the catalogue's progress

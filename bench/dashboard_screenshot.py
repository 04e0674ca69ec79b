"""The README's screenshot of the dashboard, as `streamlearn serve` serves it on the demo's tasks.

    python -m bench.dashboard_screenshot --home streamlearn-demo     # a home made by `streamlearn demo`
    python -m bench.dashboard_screenshot                             # runs `streamlearn demo` in a temp dir first

Starts `streamlearn serve` on a free loopback port on that home (no token: loopback only), opens
the page in Debian's headless Chromium through Selenium (/usr/bin/chromium, /usr/bin/chromedriver,
the browser of the tests), types a text into the try-it box and classifies it with every task,
and saves the whole page at 1280 px wide as `<docs-dir>/dashboard.png` (and at 390 px as
`dashboard-phone.png`). Before saving it checks that the page shows what the CLI prints: the
heatmap's cells are `streamlearn evaluate --matrix --json`'s, BWT and forgetting are its numbers,
and the stream table's accuracies and bytes are `streamlearn tasks --json`'s. Writes what it
checked, the commit and whether the tree was dirty to `<docs-dir>/results/dashboard.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.tasks import REPO

TRY_TEXT = "a gorgeous, witty film about the moon"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard_screenshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="A STREAMLEARN_HOME made by `streamlearn demo` (default: run the demo in a temp dir).")
    p.add_argument("--backend", default="engine", choices=("engine", "switch"), help="`streamlearn serve --backend`.")
    p.add_argument("--docs-dir", default=str(REPO / "docs"), help="Where the PNGs and results/dashboard.json go.")
    return p.parse_args(argv)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    return env | {"STREAMLEARN_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def cli_json(env: dict[str, str], *args: str):
    """`python -m streamlearn ARGS --json` on the home, parsed."""
    out = subprocess.run([sys.executable, "-m", "streamlearn", *args, "--json"], env=env, capture_output=True,
                         text=True, timeout=600, check=True)
    return json.loads(out.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(env: dict[str, str], backend: str, log: Path) -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlearn", "serve", "--port", str(port), "--backend", backend],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlearn serve exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("streamlearn serve was not ready after 300 s")


def _driver(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _until(driver, condition, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := condition(driver)):
        if time.monotonic() > deadline:
            raise RuntimeError("the page did not reach the expected state")
        time.sleep(0.2)
    return value


def _shoot(url: str, width: int, path: Path, classify: bool) -> dict:
    """Load the page, optionally classify TRY_TEXT with every task, save the whole page; return what it showed."""
    driver = _driver(width, 800)
    try:
        driver.get(url + "/")
        _until(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        shown: dict = {}
        if classify:
            driver.find_element("id", "try-text").send_keys(TRY_TEXT)
            driver.find_element("css selector", "#try button").click()
            boxes = len(driver.find_elements("css selector", "#try-tasks input:checked"))
            _until(driver, lambda d: len(d.find_elements("css selector", "#try-results tr")) == boxes)
            shown["try_it"] = {row.get_attribute("data-task"): row.find_element("css selector", "[data-field=label]").text
                               for row in driver.find_elements("css selector", "#try-results tr")}
        shown["heatmap"] = [[int(c.get_attribute("data-t")), int(c.get_attribute("data-j")),
                             float(c.get_attribute("data-value"))]
                            for c in driver.find_elements("css selector", "#heatmap td.cell[data-value]")]
        shown["bwt"] = driver.find_element("id", "bwt").get_attribute("data-value")
        shown["forgetting"] = driver.find_element("id", "forgetting").get_attribute("data-value")
        shown["stream"] = {row.get_attribute("data-task"): {
            field: row.find_element("css selector", f'[data-field="{field}"]').get_attribute("data-value")
            for field in ("val_accuracy", "test_accuracy", "bytes")}
            for row in driver.find_elements("css selector", "#stream tbody tr")}
        # The window's height is the page's plus the browser's own frame, so the viewport holds the whole page.
        frame = driver.execute_script("return window.outerHeight - window.innerHeight")
        driver.set_window_size(width, driver.execute_script("return document.documentElement.scrollHeight") + frame)
        driver.execute_script("window.scrollTo(0, 0)")  # clicking Classify scrolled the page
        time.sleep(0.5)
        driver.save_screenshot(str(path))
        return shown
    finally:
        driver.quit()


def _cross_check(shown: dict, matrix: dict, tasks: list[dict]) -> list[str]:
    problems = []
    want = [[t, j, v] for t, row in enumerate(matrix["matrix"]) for j, v in enumerate(row) if v is not None]
    if sorted(shown["heatmap"]) != sorted(want):
        problems.append(f"heatmap {shown['heatmap']} != evaluate --matrix {want}")
    for key in ("bwt", "forgetting"):
        if float(shown[key] or "nan") != matrix[key]:
            problems.append(f"page {key} {shown[key]} != evaluate --matrix {matrix[key]}")
    for row in tasks:
        got = shown["stream"].get(row["task"], {})
        for field in ("val_accuracy", "test_accuracy", "bytes"):
            if float(got.get(field) or "nan") != row[field]:
                problems.append(f"{row['task']} {field}: page {got.get(field)} != tasks --json {row[field]}")
    return problems


def _git() -> dict:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()

    return {"commit": run("rev-parse", "--short", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    docs = Path(args.docs_dir)
    (docs / "results").mkdir(parents=True, exist_ok=True)
    record: dict = {"command": "python -m bench.dashboard_screenshot" + (" " + " ".join(argv) if argv else ""),
                    **_git(), "backend": args.backend}
    if args.home:
        home = Path(args.home).resolve()
    else:
        home = Path(tempfile.mkdtemp(prefix="dashboard-demo-")) / "home"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "streamlearn", "demo", "--home", str(home)], env=_env(home), check=True)
        record["demo_seconds"] = round(time.perf_counter() - started, 1)
    env = _env(home)
    matrix, tasks = cli_json(env, "evaluate", "--matrix"), cli_json(env, "tasks")
    server, url = _serve(env, args.backend, docs / "results" / "dashboard-serve.log")
    try:
        shown = _shoot(url, 1280, docs / "dashboard.png", classify=True)
        _shoot(url, 390, docs / "dashboard-phone.png", classify=False)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        (docs / "results" / "dashboard-serve.log").unlink(missing_ok=True)
    predicted = {t: cli_json(env, "predict", t, TRY_TEXT)["predictions"][0]["label"] for t in shown["try_it"]}
    problems = _cross_check(shown, matrix, tasks)
    if predicted != shown["try_it"]:
        problems.append(f"try-it {shown['try_it']} != streamlearn predict {predicted}")
    record |= {"home": str(home), "matrix": matrix, "page": shown, "predict": predicted, "problems": problems,
               "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (docs / "results" / "dashboard.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {docs / 'dashboard.png'} and {docs / 'dashboard-phone.png'}; "
          + ("the page shows what the CLI prints" if not problems else "MISMATCH: " + "; ".join(problems)))
    if problems:
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])

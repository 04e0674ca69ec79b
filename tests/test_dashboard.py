"""The dashboard's files and its sign-in, in-process (the browser tests are in tests/integration/)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi", reason="the dashboard is part of `streamlearn serve`, which needs fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from streamlearn.dashboard import access, routes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "streamlearn" / "dashboard" / "static"


def _app(token: str | None = None) -> TestClient:
    app = fastapi.FastAPI()
    app.include_router(routes.router)
    app.include_router(access.router)
    if token:
        app.state.access = access.Access(token)
    return TestClient(app)


def test_package_data_ships_every_dashboard_file() -> None:
    """Each file of dashboard/static matches a package-data glob, so a wheel install serves the page."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["streamlearn"]
    files = [f"dashboard/static/{p.name}" for p in STATIC.iterdir()]
    assert sorted(files) == ["dashboard/static/dashboard.css", "dashboard/static/dashboard.js",
                             "dashboard/static/index.html"]
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), files


def test_the_page_loads_nothing_from_another_origin() -> None:
    """No src/href/url()/import in the page's files points at another host or scheme (data: aside): every asset is local."""
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""", text)
        for ref in (r for group in refs for r in group if r):
            local = ref.startswith("/") and not ref.startswith("//")
            assert local or ref.startswith("data:"), f"{path.name} loads {ref}"
        assert "fetch(\"http" not in text and "fetch('http" not in text, path.name


def test_page_and_assets_are_served_with_their_types_and_others_are_404() -> None:
    """`/` is the HTML with a same-origin CSP, the two assets have their media types, any other name is 404."""
    client = _app()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/dashboard/assets/dashboard.js">' in page.text
    assert client.get("/dashboard/assets/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/dashboard/assets/dashboard.css").headers["content-type"].startswith("text/css")
    for name in ("index.html", "..%2Fstatic%2Findex.html", "routes.py"):
        assert client.get(f"/dashboard/assets/{name}").status_code == 404, name


def test_sign_in_sets_a_session_cookie_derived_from_the_token_never_the_token() -> None:
    """The right token gets a 303 to `/` and an HttpOnly, SameSite=Strict cookie that is not the token; a wrong one 401."""
    token = "tok-" + "x" * 20
    client = _app(token)
    form = client.get(access.LOGIN_PATH)
    assert form.status_code == 200 and 'type="password"' in form.text
    wrong = client.post(access.LOGIN_PATH, data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers and token not in wrong.text
    right = client.post(access.LOGIN_PATH, data={"token": token}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{access.COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert token not in cookie and token not in right.text
    check = access.Access(token)
    assert check.allows({b"cookie": f"{access.COOKIE}={check.session()}".encode()})
    assert check.allows({b"authorization": f"Bearer {token}".encode()})
    assert not check.allows({b"cookie": f"{access.COOKIE}={token}".encode()})
    assert not check.allows({b"cookie": b"\xff;;=garbage"})
    assert not check.allows({})

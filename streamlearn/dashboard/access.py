"""How a browser presents the API token: a sign-in form that sets a session cookie derived from it.

A browser cannot add `Authorization: Bearer …` to a page it navigates to, so when the server has a
token (it must, off loopback) the page at `/` answers 401 with a sign-in form instead. The form
posts the token to `/dashboard/login`; if it matches (compared in constant time) the answer sets
the cookie `streamlearn_session` to HMAC-SHA256(token, "streamlearn dashboard session"), which
the server then accepts like the bearer token. The token itself is never echoed: not in the
cookie, not in a page, not in a log. The cookie is HttpOnly (scripts cannot read it) and
SameSite=Strict (another site's page cannot make the browser send it), and `Secure` when the
request came over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
from http.cookies import SimpleCookie

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter()

COOKIE = "streamlearn_session"
"""Name of the dashboard's session cookie."""
LOGIN_PATH = "/dashboard/login"
"""The sign-in form (GET) and its target (POST)."""
ASSETS_PREFIX = "/dashboard/assets/"
"""Where the page's stylesheet and script are served (open: the sign-in form uses the stylesheet)."""
_CONTEXT = b"streamlearn dashboard session"


class Access:
    """The server's token check: a bearer header or the session cookie derived from the token.

    Args:
        token: The API token (`STREAMLEARN_API_TOKEN`).
    """

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._session = hmac.new(self._token, _CONTEXT, hashlib.sha256).hexdigest().encode()

    def matches(self, given: str | bytes) -> bool:
        """True when `given` is the token (constant time: the time taken says nothing of a near guess)."""
        return hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._token)

    def allows(self, headers: dict[bytes, bytes]) -> bool:
        """True when the request carries `Authorization: Bearer <token>` or the session cookie."""
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and self.matches(given.strip()):
            return True
        return hmac.compare_digest(_cookie(headers.get(b"cookie", b"")), self._session)

    def session(self) -> str:
        """The session cookie's value."""
        return self._session.decode()


def _cookie(header: bytes) -> bytes:
    jar = SimpleCookie()
    try:
        jar.load(header.decode("latin-1"))
    except Exception:  # a malformed Cookie header simply carries no session  # noqa: BLE001
        return b""
    morsel = jar.get(COOKIE)
    return morsel.value.encode() if morsel is not None else b""


def is_open(scope: dict) -> bool:
    """True for the sign-in form, its target and the page's stylesheet and script (code, no data):
    the only requests answered without the token."""
    if scope["path"] == LOGIN_PATH:
        return scope["method"] in ("GET", "POST")
    return scope["method"] == "GET" and scope["path"].startswith(ASSETS_PREFIX)


def sign_in_page(message: str = "", status: int = 401) -> HTMLResponse:
    """The sign-in form (no data of the server on it); 401 by default, as every refused request."""
    note = f'<p class="error">{message}</p>' if message else ""
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>streamlearn: sign in</title>
<link rel="stylesheet" href="/dashboard/assets/dashboard.css"></head><body>
<main><section class="card wide"><h2>streamlearn dashboard</h2>
<p class="hint">This server requires its API token (STREAMLEARN_API_TOKEN).</p>{note}
<form method="post" action="{LOGIN_PATH}"><label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form></section></main></body></html>"""
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


@router.get(LOGIN_PATH, include_in_schema=False)
def sign_in_form() -> HTMLResponse:
    """The sign-in form."""
    return sign_in_page(status=200)


@router.post(LOGIN_PATH, include_in_schema=False)
def sign_in(request: Request, token: str = Form(max_length=4096)):
    """Check the token; on a match set the session cookie and go to the page, else show the form again."""
    access: Access | None = getattr(request.app.state, "access", None)
    if access is None:
        return RedirectResponse("/", status_code=303)  # no token configured: nothing to sign in to
    if not access.matches(token):
        return sign_in_page("That is not this server's API token.")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, access.session(), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response

"""A browser's session: the refresh token in a cookie script cannot read, and the CSRF rule.

The browser keeps its access token in memory only. The refresh token never reaches script:
Login and Refresh move it from the response into an `HttpOnly; Secure; SameSite=Strict` cookie
on this origin, and Refresh without a token in its body reads it from there. Cross-site
requests cannot use it: the cookie is SameSite=Strict, a Connect call's content type makes the
browser ask (CORS preflight) first, which this server never grants, and a call that uses the
cookie must carry an `Origin` header naming this very origin.
"""

from __future__ import annotations

from typing import Any, cast

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.message import Message
from parley.auth.v1 import auth_pb2

# The refresh token's cookie: `__Host-` makes the browser refuse it unless Secure, Path=/ and
# without Domain, so no other host (a sibling subdomain) can set or read it.
REFRESH_COOKIE = "__Host-parley-refresh"
REFRESH_COOKIE_MAX_AGE_S = 30 * 24 * 3600
# Beside it, a cookie script may read that holds no secret: only that this browser has a session
# to refresh, so that a first visit does not ask for one (a 401 in the console) when it has none.
SESSION_HINT_COOKIE = "__Host-parley-session"
# Calls whose response carries a refresh token (moved into the cookie) and which may read it.
ISSUES_REFRESH = frozenset({"Login", "Refresh"})


# -- the refresh-token cookie and its CSRF rule --


def cookie_value(headers: Any, name: str) -> str:
    for header in headers.getall("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return str(value)
    return ""


def same_origin(headers: Any) -> bool:
    """A browser names the page's origin on every POST; ours must be this very host."""
    origin, host = headers.get("origin", ""), headers.get("host", "")
    return bool(origin) and bool(host) and origin == f"https://{host}"


def refresh_cookie(token: str, max_age: int = REFRESH_COOKIE_MAX_AGE_S) -> str:
    return f"{REFRESH_COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"


def session_hint_cookie(max_age: int = REFRESH_COOKIE_MAX_AGE_S) -> str:
    return f"{SESSION_HINT_COOKIE}={1 if max_age else ''}; Path=/; Max-Age={max_age}; Secure; SameSite=Strict"


class BrowserSessions:
    """Moves refresh tokens between response bodies and the HttpOnly cookie."""

    def before(self, method: str, request: Message, ctx: RequestContext[Any, Any]) -> None:
        headers = ctx.request_headers
        if headers.get("origin") and not same_origin(headers):
            raise ConnectError(Code.PERMISSION_DENIED, "calls from another site are refused")
        if method == "Refresh":
            refresh = cast(auth_pb2.RefreshRequest, request)
            if not refresh.refresh_token:
                if not same_origin(headers):
                    raise ConnectError(
                        Code.PERMISSION_DENIED, "a refresh by cookie must come from this site's own page (Origin)"
                    )
                refresh.refresh_token = cookie_value(headers, REFRESH_COOKIE)
                if not refresh.refresh_token:
                    raise ConnectError(Code.UNAUTHENTICATED, "no session in this browser; log in")

    def after(self, method: str, response: Message, ctx: RequestContext[Any, Any]) -> Message:
        if method in ISSUES_REFRESH and ctx.request_headers.get("origin"):
            login = cast(auth_pb2.LoginResponse, response)
            if login.refresh_token:
                ctx.response_headers.add("set-cookie", refresh_cookie(login.refresh_token))
                ctx.response_headers.add("set-cookie", session_hint_cookie())
                login.refresh_token = ""  # script never sees it
        if method == "Logout":
            ctx.response_headers.add("set-cookie", refresh_cookie("", max_age=0))
            ctx.response_headers.add("set-cookie", session_hint_cookie(max_age=0))
        return response

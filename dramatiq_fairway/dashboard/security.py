"""Who may use the dashboard and how actions are protected: HTTP basic auth, CSRF tokens, bind rule.

- Authentication: HTTP basic with ``FAIRWAY_DASHBOARD__USERNAME`` / ``__PASSWORD``, both compared
  in constant time; every route but ``/healthz`` needs it once credentials are configured.
- CSRF: each browser gets a random session value in an HttpOnly, SameSite=Lax cookie; forms
  carry HMAC(process secret, session value). A POST is accepted only when its form token matches
  the cookie's HMAC, so a page on another site can neither read the token nor forge one, even if
  it can plant a cookie.
- Binding: a non-loopback address is refused unless credentials are configured.
- Every response forbids framing (a confirmation dialog must not be clicked through from another
  site) and scripts other than the dashboard's own file, a second line behind autoescaping.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from ..settings import DashboardSettings

CSRF_COOKIE = "fairway_csrf"
CSRF_FIELD = "csrf"
OPEN_PATHS = frozenset({"/healthz"})
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


def has_credentials(settings: DashboardSettings) -> bool:
    return bool(settings.username) and settings.password is not None and bool(settings.password.get_secret_value())


def check_bind(host: str, settings: DashboardSettings) -> None:
    """Refuse to serve a non-loopback address without credentials (``ConfigError``, one line)."""
    if is_loopback(host) or has_credentials(settings):
        return
    raise ConfigError(
        f"FAIRWAY_DASHBOARD__HOST: {host!r} is not a loopback address; "
        "set FAIRWAY_DASHBOARD__USERNAME and FAIRWAY_DASHBOARD__PASSWORD to serve it"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BasicAuth:
    """ASGI middleware answering 401 to a request without the configured credentials."""

    def __init__(self, app: ASGIApp, settings: DashboardSettings) -> None:
        self.app = app
        self.username = (settings.username or "").encode()
        self.password = settings.password.get_secret_value().encode() if settings.password else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self.allowed(Request(scope)):
            response = PlainTextResponse(
                "authentication required", status_code=401, headers={"WWW-Authenticate": 'Basic realm="fairway"'}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allowed(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Both compared, always: the time taken must not tell which one was wrong.
        same_user = hmac.compare_digest(username, self.username)
        same_password = hmac.compare_digest(password, self.password)
        return same_user & same_password


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Csrf:
    """Per-session CSRF tokens bound to this process's secret (see the module docstring)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def session(self, request: Request) -> tuple[str, bool]:
        """The request's session value, and whether it is new (the response must then set the cookie)."""
        current = request.cookies.get(CSRF_COOKIE)
        if current:
            return current, False
        return secrets.token_urlsafe(32), True

    def token(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def valid(self, request: Request, submitted: object) -> bool:
        session = request.cookies.get(CSRF_COOKIE)
        if not session or not isinstance(submitted, str):
            return False
        return hmac.compare_digest(submitted.encode(), self.token(session).encode())

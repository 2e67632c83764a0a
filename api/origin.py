"""Cross-site request refusal, as pure ASGI middleware (issue 17, finding 6).

Without an API key a page on any other web origin could write: ``fetch(POST /documents,
{mode: "no-cors", body: FormData})`` and ``fetch(POST /reindex)`` answered 201 / 200 and ``/ask``
then quoted the planted document. Browsers send such "simple" requests without asking the
server first (no CORS preflight), so the server itself must refuse them. Two independent rules,
for every method but GET / HEAD / OPTIONS:

1. **Not from another origin.** Refused (403) when ``Sec-Fetch-Site`` is ``cross-site`` or
   ``same-site`` (another port or subdomain is another origin), or when ``Origin`` is present and
   is not the server's own (its host:port compared with the ``Host`` header), unless the origin is
   listed in ``QIAO_ALLOWED_ORIGINS``. ``same-origin`` / ``none`` / absent headers pass: command-line
   clients (curl, Python) send neither header. This covers the read-only POSTs too (``/search``,
   ``/ask``, ``/v1/chat/completions``): another site cannot make a visitor's browser spend this
   server's CPU.
2. **Writes must be non-simple requests.** Every route that changes state (any method but the
   read-only POSTs above; new routes are writes by default) needs the header ``X-Qiao-Request``
   (any value) or a JSON body. A browser only sends a custom header or ``application/json``
   cross-origin after a CORS preflight, which this server never grants; so this holds even in a
   browser that sends neither ``Origin`` nor ``Sec-Fetch-Site``. The web page sends the header;
   ``qiao add`` does not use HTTP.

No ``Access-Control-Allow-*`` header is ever sent, so other origins cannot read any response
either (the browser hides it). DNS rebinding (a foreign name resolving to this host) is not
covered by rule 1 and needs an API key or a reverse proxy checking ``Host``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from qiao.api.limits import error_body, send_json

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_POSTS = frozenset({"/search", "/ask", "/v1/chat/completions"})
WRITE_HEADER = "X-Qiao-Request"


def origin_netloc(origin: str) -> str | None:
    """``host[:port]`` of an ``Origin`` header (lower case), or None for ``null`` / malformed ones."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.lower()


class CrossSiteMiddleware:
    """403 for state-changing requests from other origins and for simple (form-like) writes (see the module doc)."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str] | tuple[str, ...] = (), read_only_posts=READ_ONLY_POSTS):
        self.app = app
        self.allowed = {o.strip().rstrip("/").lower() for o in allowed_origins}
        self.read_only_posts = frozenset(read_only_posts)

    def problem(self, scope: Scope, headers: Headers) -> tuple[str, str] | None:
        """``(message, code)`` when the request must be refused, else None."""
        origin = headers.get("origin")
        allowed = origin is not None and origin.strip().rstrip("/").lower() in self.allowed
        if not allowed:
            if origin is not None:
                host = headers.get("host", "").lower()
                if not host or origin_netloc(origin) != host:
                    shown = origin if len(origin) <= 100 else origin[:100] + "…"
                    return (
                        f"requests from another web origin ({shown!r}) may not change or query this server: "
                        "use the page this server serves, or list the origin in QIAO_ALLOWED_ORIGINS",
                        "cross_origin_refused",
                    )
            site = headers.get("sec-fetch-site", "").lower()
            if site in ("cross-site", "same-site"):
                return (
                    f"a {site} browser request may not change or query this server: use the page this server "
                    "serves, or list the page's origin in QIAO_ALLOWED_ORIGINS",
                    "cross_site_refused",
                )
        is_write = not (scope["method"] == "POST" and scope["path"] in self.read_only_posts)
        if is_write and not headers.get(WRITE_HEADER.lower(), "").strip():
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json" and not ctype.endswith("+json"):
                return (
                    f"{scope['method']} {scope['path']} changes the server's documents: send the header "
                    f"'{WRITE_HEADER}: 1' (it keeps web pages on other sites from sending this request)",
                    "write_header_required",
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        found = self.problem(scope, Headers(scope=scope))
        if found is None:
            await self.app(scope, receive, send)
            return
        message, code = found
        await send_json(send, 403, error_body(scope["path"], 403, message, code))

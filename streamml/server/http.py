"""A lean ASGI layer: routing, bearer auth and scopes, rate limit, body limit, deadlines, errors.

Hand-written rather than a framework: the service has a dozen fixed routes and its latency
target is a millisecond, so each request does only what it needs (one regex match, one dict
lookup for the token, one bucket update, orjson). `App` calls each route's handler with a
`Request`; handlers return a `Response` or raise `HTTPError`. Every error body is JSON
``{"error": code, "detail": text}`` (plus `field` for invalid bodies).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from streamml.server.auth import ANONYMOUS, Principal, RateLimiter, TokenStore

__all__ = ["App", "Deadline", "HTTPError", "Request", "Response", "Route", "json_response"]

_JSON = [(b"content-type", b"application/json")]
_log = logging.getLogger(__name__)


class HTTPError(Exception):
    """An error answer: status, machine-readable code, human detail, extra fields and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def response(self) -> Response:
        """Return the JSON error response."""
        body = {"error": self.code, "detail": self.detail, **self.extra}
        return json_response(body, self.status, self.headers)


@dataclass(slots=True)
class Response:
    """A complete response: status, headers, body bytes."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: list(_JSON))


def json_response(
    body: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """Return `body` as a JSON response."""
    extra = [(k.lower().encode(), v.encode()) for k, v in headers]
    return Response(status, orjson.dumps(body), [*_JSON, *extra])


class Deadline:
    """A request's deadline: `check` after a synchronous stage, `wait` around an awaitable.

    Both raise `HTTPError` 504 naming the stage that was running when the deadline passed.
    """

    __slots__ = ("budget_ms", "end", "start")

    def __init__(self, budget_ms: int, start: float | None = None) -> None:
        self.budget_ms = budget_ms
        self.start = time.perf_counter() if start is None else start
        self.end = self.start + budget_ms / 1000.0

    def remaining(self) -> float:
        """Seconds left (may be negative)."""
        return self.end - time.perf_counter()

    def exceeded(self, stage: str) -> HTTPError:
        """Return the 504 error naming `stage`."""
        spent = (time.perf_counter() - self.start) * 1000.0
        return HTTPError(
            504,
            "deadline_exceeded",
            f"the {self.budget_ms} ms deadline passed while {stage} ({spent:.1f} ms spent)",
            stage=stage,
        )

    def check(self, stage: str) -> None:
        """Raise 504 if the deadline passed (call after `stage` finished)."""
        if time.perf_counter() > self.end:
            raise self.exceeded(stage)

    async def wait(self, aw: Awaitable[Any], stage: str) -> Any:
        """Await `aw` until the deadline; past it, raise 504 naming `stage`."""
        try:
            return await asyncio.wait_for(aw, max(0.0, self.remaining()))
        except TimeoutError:
            raise self.exceeded(stage) from None


@dataclass(slots=True)
class Request:
    """What a handler gets: path parameters, query, headers, body, caller, deadline."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[bytes, bytes]
    body: bytes
    principal: Principal
    deadline: Deadline


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """A method and path pattern (``{name}`` matches one path segment), its handler and scope.

    `name` labels the route in metrics; `scope` None means no token is needed.
    """

    method: str
    pattern: str
    handler: Handler
    scope: str | None = None
    name: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = re.split(r"(\{[a-z_]+\})", self.pattern)
        rx = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
        object.__setattr__(self, "regex", re.compile(f"^{rx}$"))
        if not self.name:
            object.__setattr__(self, "name", self.pattern)


Observer = Callable[[str, str, int, float], None]
"""Called after each request with (route name, method, status, seconds)."""


class App:
    """The ASGI application: routes plus the checks every request goes through, in order.

    1. route (404, 405); 2. token (401) and scope (403); 3. rate limit per token (429 with
    `Retry-After`); 4. body size (413); 5. the handler, under the request deadline (504).
    `startup` and `shutdown` run on the ASGI lifespan events.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        tokens: TokenStore,
        limiter: RateLimiter,
        max_body_bytes: int,
        deadline_ms: int,
        observe: Observer | None = None,
        startup: Callable[[], Awaitable[None]] | None = None,
        shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.routes = list(routes)
        self._static = {(r.method, r.pattern): r for r in routes if "{" not in r.pattern}
        self._dynamic = [r for r in routes if "{" in r.pattern]
        self.tokens = tokens
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.deadline_ms = deadline_ms
        self.observe = observe
        self.startup = startup
        self.shutdown = shutdown

    async def __call__(self, scope: dict, receive, send) -> None:
        """Serve one ASGI connection scope."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.startup is not None:
                        await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.shutdown is not None:
                    await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        route = self._static.get((method, path))
        if route is not None:
            return route, {}
        allowed = []
        for r in self._dynamic:
            m = r.regex.match(path)
            if m is not None:
                if r.method == method:
                    return r, m.groupdict()
                allowed.append(r.method)
        if not allowed:
            allowed = [r.method for r in self._static.values() if r.pattern == path]
        if allowed:
            raise HTTPError(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; allowed: {', '.join(sorted(allowed))}",
                headers=[("allow", ", ".join(sorted(allowed)))],
            )
        raise HTTPError(404, "not_found", f"no route for {method} {path}")

    def _principal(self, route: Route, headers: dict[bytes, bytes]) -> Principal:
        if route.scope is None or not self.tokens.enabled:
            return ANONYMOUS
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPError(
                401,
                "unauthenticated",
                "send `Authorization: Bearer TOKEN`",
                headers=[("www-authenticate", "Bearer")],
            )
        principal = self.tokens.check(token.strip())
        if principal is None:
            raise HTTPError(
                401,
                "unauthenticated",
                "unknown token",
                headers=[("www-authenticate", 'Bearer error="invalid_token"')],
            )
        if not principal.allows(route.scope):
            raise HTTPError(
                403,
                "forbidden",
                f"token {principal.name!r} lacks the {route.scope!r} scope",
            )
        wait = self.limiter.take(principal.name)
        if wait > 0:
            raise HTTPError(
                429,
                "rate_limited",
                f"token {principal.name!r} is over its rate limit; retry in {wait:.3f} s",
                headers=[("retry-after", RateLimiter.retry_after(wait))],
            )
        return principal

    async def _body(self, headers: dict[bytes, bytes], receive) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, "body_too_large", f"body of {int(declared)} bytes > {limit}")
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, "body_too_large", f"body larger than {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _http(self, scope: dict, receive, send) -> None:
        started = time.perf_counter()
        method = scope["method"]
        path = scope["path"]
        name = "unmatched"
        try:
            route, params = self._match(method, path)
            name = route.name
            headers = dict(scope["headers"])
            principal = self._principal(route, headers)
            body = b""
            if method in ("POST", "PUT", "PATCH"):
                body = await self._body(headers, receive)
            raw_query = scope.get("query_string", b"")
            query = dict(parse_qsl(raw_query.decode("latin-1"))) if raw_query else {}
            request = Request(
                method,
                path,
                params,
                query,
                headers,
                body,
                principal,
                Deadline(self.deadline_ms, started),
            )
            response = await route.handler(request)
        except HTTPError as exc:
            response = exc.response()
        except Exception as exc:
            _log.exception("%s %s failed", method, path)
            response = HTTPError(500, "internal", f"{type(exc).__name__}: {exc}").response()
        headers = response.headers
        headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        if self.observe is not None:
            self.observe(name, method, response.status, time.perf_counter() - started)

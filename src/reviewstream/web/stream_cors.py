"""CORS for ``/v1/stream/`` as the Durable Streams protocol expects: any origin, the
``Stream-*`` and ``Producer-*`` headers allowed and exposed — unless
``REVIEWSTREAM_CORS_ORIGINS`` restricts origins, then only those (DESIGN, Round 3).

Pure ASGI, outside the app's own CORS middleware: a stream request's ``Origin`` is taken out of
the scope before it goes on, so the app's middleware (with its narrower header lists) leaves it
alone and this one answers for it. Credentials are bearer headers or ``?token=``, never
cookies, so no ``Allow-Credentials``. An ``OPTIONS`` request on a stream path is answered here.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..streams import wire

PREFIX = "/v1/stream/"
_ALLOW_METHODS = ", ".join(wire.METHODS).encode()
_ALLOW_HEADERS = ", ".join(wire.REQUEST_HEADERS).encode()
_EXPOSE = ", ".join(wire.RESPONSE_HEADERS).encode()
_SECURITY = [(k.lower().encode(), v.encode()) for k, v in wire.SECURITY_HEADERS.items()]


class StreamCors:
    """Pure ASGI: CORS for the Durable Streams paths; every other request passes untouched."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)  # empty: any origin

    def _allowed(self, origin: str) -> bytes | None:
        if not self.origins:
            return b"*"
        return origin.encode("latin-1") if origin in self.origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        origin = Headers(scope=scope).get("origin")
        allowed = self._allowed(origin) if origin is not None else None
        if scope["method"] == "OPTIONS":
            headers = [*_SECURITY, (b"content-length", b"0")]
            if allowed is not None:
                headers += [
                    (b"access-control-allow-origin", allowed),
                    (b"access-control-allow-methods", _ALLOW_METHODS),
                    (b"access-control-allow-headers", _ALLOW_HEADERS),
                    (b"access-control-expose-headers", _EXPOSE),
                    (b"access-control-max-age", b"600"),
                ]
                if allowed != b"*":
                    headers.append((b"vary", b"Origin"))
            status = 204 if allowed is not None or origin is None else 403
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if origin is None:
            await self.app(scope, receive, send)
            return
        scope = {
            **scope,
            "headers": [(k, v) for k, v in scope["headers"] if k != b"origin"],
        }
        if allowed is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"access-control-allow-origin", allowed))
                headers.append((b"access-control-expose-headers", _EXPOSE))
                if allowed != b"*":
                    headers.append((b"vary", b"Origin"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

"""The HTTP edge: the ASGI app, its routes, and what only an HTTP server needs.

``create_app(settings)`` builds the app; ``begin_shutdown(app)`` ends its live streams when the
server stops accepting connections. Nothing here holds domain logic: routes parse, call the
``ReviewService`` and encode (``reviewstream.wire``).
"""

from __future__ import annotations

from .app import begin_shutdown, create_app, server_options

__all__ = ["begin_shutdown", "create_app", "server_options"]

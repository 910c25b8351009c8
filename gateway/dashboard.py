"""``GET /dashboard``: the operator's page, served in paid mode only (gateway/routes.py) (its data needs the admin endpoints).

The page itself is public and secret-free; everything it shows comes from the admin-token JSON endpoints.
The Content-Security-Policy forbids any asset or connection outside this gateway, so the page stays
self-contained.
"""

from __future__ import annotations

from aiohttp import web

from .dashboard_page import PAGE

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_BODY = PAGE.encode()


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})



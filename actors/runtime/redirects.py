"""No redirects towards providers, nodes or feeds.

aiohttp follows redirects unless each call says ``allow_redirects=False``. A provider (or an announced node)
answering 307 to ``http://127.0.0.1:…`` would otherwise receive the client's prompt and credentials at an address
the private-address guard never saw: the guard checks the first URL only. Every call passes
``allow_redirects=False``; every session that talks to one of them also carries ``refuse_redirects()``, so a call
that forgets the flag fails instead of following.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import aiohttp


class RedirectRefused(aiohttp.ClientConnectionError):
    """A redirect arbstr would not follow (a connection error to the caller: the peer cannot be used as called)."""


async def _on_redirect(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                       params: aiohttp.TraceRequestRedirectParams) -> None:
    params.response.close()
    raise RedirectRefused(f"{params.url.host} answered HTTP {params.response.status}: redirects are not followed")


def refuse_redirects(trace: Optional[aiohttp.TraceConfig] = None) -> aiohttp.TraceConfig:
    """A trace config (``trace``, or a new one: one config per session is cheaper than several) that aborts any
    request the moment aiohttp is about to follow a redirect."""
    trace = trace or aiohttp.TraceConfig()
    trace.on_request_redirect.append(_on_redirect)
    return trace

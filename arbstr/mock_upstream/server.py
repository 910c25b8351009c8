"""Assembling and running the mock: the app (control API + five endpoints on every provider prefix) and a
server on a real socket for tests, benchmarks and ``arbstr mock-upstream``."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable, Optional, Sequence

from aiohttp import web

from .api import DEFAULT_EMBEDDING_DIMENSIONS, DEFAULT_MODELS, DEFAULT_OUTPUT_TOKENS, ApiFrame, Handler
from .chat import chat
from .completions import completions
from .control import add_control_routes
from .embeddings import embeddings
from .faults import Fault
from .models import models
from .responses import responses
from .state import DEFAULT_HISTORY, DEFAULT_PROVIDER, ProviderState, Providers

# (method, path, endpoint name as counted in stats, handler); each is served at /v1/... and /<provider>/v1/...
ENDPOINTS: tuple[tuple[str, str, str, Handler], ...] = (
    ("POST", "/v1/chat/completions", "chat.completions", chat),
    ("POST", "/v1/completions", "completions", completions),
    ("POST", "/v1/embeddings", "embeddings", embeddings),
    ("POST", "/v1/responses", "responses", responses),
    ("GET", "/v1/models", "models", models),
)


class MockUpstream(ApiFrame):
    """The reply settings, the providers' state, and :meth:`build_app` wiring them into an aiohttp app."""

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        chunk_delay_ms: int = 0,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        models: Sequence[str] = DEFAULT_MODELS,
        embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        super().__init__(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms,
                         default_output_tokens=default_output_tokens, models=models,
                         embedding_dimensions=embedding_dimensions)
        self.history = history
        self.registry = Providers(history)

    @property
    def providers(self) -> dict[str, ProviderState]:
        return self.registry.by_name

    def provider(self, name: str) -> ProviderState:
        return self.registry.get(name)

    def set_faults(self, provider: str, faults: Fault | Sequence[Fault]) -> None:
        self.provider(provider).set_faults([faults] if isinstance(faults, Fault) else list(faults))

    def clear_faults(self, provider: str) -> None:
        self.provider(provider).clear_faults()

    def stats(self, provider: str) -> dict[str, Any]:
        return self.provider(provider).snapshot()

    def reset(self) -> None:
        self.registry.reset()

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app[MOCK_UPSTREAM_KEY] = self
        add_control_routes(app.router, self.registry)
        for method, path, endpoint, handler in ENDPOINTS:
            route = self._route(endpoint, handler)
            app.router.add_route(method, path, route)
            app.router.add_route(method, "/{provider}" + path, route)
        return app

    def _route(self, endpoint: str, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            state = self.provider(request.match_info.get("provider", DEFAULT_PROVIDER))
            return await self.serve(request, state, endpoint, handler)

        return route


MOCK_UPSTREAM_KEY: web.AppKey[MockUpstream] = web.AppKey("mock_upstream", MockUpstream)


def build_app(**options: Any) -> web.Application:
    """An aiohttp app serving a fresh :class:`MockUpstream` (options as its constructor); the instance
    is ``app[MOCK_UPSTREAM_KEY]``."""
    return MockUpstream(**options).build_app()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class MockUpstreamServer:
    """A running mock upstream on a real socket (``port=0`` picks a free one); use as an async context."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.host = host
        self.port = port
        self.upstream = MockUpstream(**options)
        self._runner: Optional[web.AppRunner] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def base_url(self, provider: Optional[str] = None) -> str:
        """What an OpenAI client takes as ``base_url`` for ``provider`` (``None``: the plain ``/v1``)."""
        return f"{self.url}/{provider}/v1" if provider else f"{self.url}/v1"

    async def start(self) -> "MockUpstreamServer":
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        runner = web.AppRunner(self.upstream.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "MockUpstreamServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    host: str = "127.0.0.1",
    port: int = 9100,
    *,
    ready: Optional[Callable[[MockUpstreamServer], None]] = None,
    **options: Any,
) -> None:
    """Serve until cancelled. ``options`` go to :class:`MockUpstream` (``latency_ms``, ``chunk_delay_ms``,
    ``default_output_tokens``, ``models``, ...); ``ready`` is called once the socket listens."""
    server = MockUpstreamServer(host, port, **options)
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
    finally:
        await server.stop()

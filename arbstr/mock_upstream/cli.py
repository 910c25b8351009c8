"""``arbstr mock-upstream``: the command line that serves the mock until interrupted."""

from __future__ import annotations

import argparse
import asyncio
from typing import Callable, Optional, Sequence

from .api import DEFAULT_MODELS, DEFAULT_OUTPUT_TOKENS
from .server import MockUpstreamServer, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbstr mock-upstream",
                                description="OpenAI-compatible mock providers: /<provider>/v1/...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--latency-ms", type=int, default=0, help="wait before every response's headers")
    p.add_argument("--chunk-delay-ms", type=int, default=0, help="wait between streamed tokens")
    p.add_argument("--output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS,
                   help="tokens per reply when the request sets no lower max_tokens")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated ids for GET /v1/models")
    return p


async def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: parse ``argv`` and serve until cancelled."""
    args = _parser().parse_args(list(argv) if argv is not None else None)

    def announce(server: MockUpstreamServer) -> None:
        print(f"mock upstream listening on {server.url} (providers at {server.url}/<provider>/v1)", flush=True)

    await serve(args.host, args.port, ready=announce, latency_ms=args.latency_ms,
                chunk_delay_ms=args.chunk_delay_ms, default_output_tokens=args.output_tokens,
                models=[m for m in args.models.split(",") if m])
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Blocking entry (uvloop when installed); Ctrl-C stops it quietly."""
    try:
        import uvloop

        loop_factory: Optional[Callable[[], asyncio.AbstractEventLoop]] = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main(argv))
    except KeyboardInterrupt:
        return 0

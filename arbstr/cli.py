"""The ``arbstr`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Optional

from schemas.config import Config, ConfigError, load_config

from . import admin_cli, bus_cli, events_cli, providers_cli
from .admin_token import ENV as ADMIN_ENV, settle_admin_token, token_file
from .logs import setup_logging
from .components import COMPONENTS, install_uvloop, run_component, tune_gc


def _setup_logging(level: str, fmt: str = "text") -> None:
    setup_logging(level, fmt)


def _load(path: Optional[str]) -> Config:
    if path is None:
        return Config()
    return load_config(path)


def cmd_up(args: argparse.Namespace) -> int:
    from .demo import ensure_demo_agent, write_demo_config
    from .supervisor import Supervisor, install_signal_handlers

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.config:
        config_path = Path(args.config).resolve()
        config = load_config(config_path)
    else:
        config_path = write_demo_config(data_dir, args.port or 8080, args.host or "127.0.0.1")
        config = load_config(config_path)
    if config.vault is not None:
        # One rule (arbstr/admin_token.py): the environment, else the config, else the data dir's file. Every
        # component gets the result in its environment, and the file lets `arbstr agent …` find it.
        admin_token = settle_admin_token(config, data_dir)
        os.environ[ADMIN_ENV] = admin_token
    # Command-line overrides reach the gateway process as its own --host/--port.
    config.server.host = args.host or config.server.host
    config.server.port = args.port or config.server.port
    _setup_logging(config.log_level)
    sup = Supervisor(config, config_path, data_dir)
    install_signal_handlers(sup)
    try:
        url = sup.start()
        auth = ""
        print(f"arbstr is up: {url}/v1  (OpenAI base URL)", flush=True)
        if config.vault is not None and config.vault.demo_agent is not None:
            demo = config.vault.demo_agent
            agent = ensure_demo_agent(url, data_dir, os.environ[ADMIN_ENV], demo.name, demo.deposit_msat)
            auth = f" -H 'Authorization: Bearer {agent['token']}'"
            print(f"  demo agent: {agent['agent_id']}  token: {agent['token']}", flush=True)
        if config.vault is not None:
            print(f"  admin token: in {token_file(data_dir)}", flush=True)
        print(f"  config: {config_path}", flush=True)
        print(f"  logs:   {data_dir / 'logs'}", flush=True)
        print(f"  try:    curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
              f"-d '{{\"model\": \"auto\", \"messages\": [{{\"role\": \"user\", \"content\": \"hello there\"}}]}}' -i"
              "   (model auto: the router picks tier, model and provider; see x-arbstr-tier)",
              flush=True)
        print("Ctrl-C stops everything.", flush=True)
        sup.watch()
    except RuntimeError as e:
        print(f"arbstr up failed: {e}", file=sys.stderr)
        return 1
    finally:
        sup.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(config.log_level, config.log_format)
    install_uvloop()
    tune_gc()
    try:
        if args.host:
            config.server.host = args.host
        if args.port is not None:
            config.server.port = args.port
        asyncio.run(run_component(args.component, config, args.nats, creds=args.creds))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_mock(args: argparse.Namespace) -> int:
    from .mock_upstream.cli import run as run_mock

    return run_mock(args.mock_args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbstr", description="Open LLM router with Bitcoin settlement")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack: embedded NATS and every component")
    up.add_argument("--config", help="arbstr.toml (default: the demo with three mock providers)")
    up.add_argument("--data-dir", default="./arbstr-data", help="JetStream store, logs, generated config")
    up.add_argument("--host", help="gateway listen address (overrides [server].host)")
    up.add_argument("--port", type=int, help="gateway port (overrides [server].port)")
    up.set_defaults(func=cmd_up)

    run = sub.add_parser("run", help="run one component; run it N times to scale it")
    run.add_argument("component", choices=COMPONENTS)
    run.add_argument("--config", help="arbstr.toml")
    run.add_argument("--nats", help="NATS URL (overrides [nats].url)")
    run.add_argument("--creds", help="this component's bus credential: an NKey seed file (default: "
                                     "$ARBSTR_NATS_CREDS, else [nats].creds; none: an open bus)")
    run.add_argument("--host", help="gateway only: listen address")
    run.add_argument("--port", type=int, help="gateway only: port")
    run.set_defaults(func=cmd_run)

    admin_cli.add_parsers(sub)
    events_cli.add_parser(sub)
    providers_cli.add_parser(sub)
    bus_cli.add_parser(sub)
    for name in ("agent", "approvals", "books", "audit", "payouts", "reconcile", "wallet"):
        sub.choices[name].set_defaults(func=admin_cli.main)

    mock = sub.add_parser("mock-upstream", add_help=False,
                          help="the mock OpenAI-compatible upstream used by tests, benchmarks and the demo "
                               "(see `arbstr mock-upstream --help`)")
    mock.add_argument("mock_args", nargs=argparse.REMAINDER)
    mock.set_defaults(func=cmd_mock)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mock-upstream"]:  # its own parser owns every flag after the word
        from .mock_upstream.cli import run as run_mock

        return run_mock(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2

"""Where the operator's admin token comes from — one rule for `arbstr up`, its components and the operator CLI:

1. the environment, ``ARBSTR_ADMIN_TOKEN`` (wins over everything);
2. else the config's ``[vault] admin_token``;
3. else the data dir's ``admin-token`` file (`arbstr up` makes one when none of the three exists).

`arbstr up` writes the token it settled on to ``<data-dir>/admin-token`` (0600) and hands it to every component
in ``ARBSTR_ADMIN_TOKEN``, so the CLI pointed at that data dir (or given the same config) finds the same token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping, Optional

from schemas.config import Config

ENV = "ARBSTR_ADMIN_TOKEN"
FILE_NAME = "admin-token"


def token_file(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def find_admin_token(config: Optional[Config], data_dir: Optional[Path],
                     env: Mapping[str, str] = os.environ) -> tuple[Optional[str], str]:
    """The token and where it came from ("environment", "config", "data dir"); (None, "") when nowhere."""
    value = env.get(ENV, "")
    if value:
        return value, "environment"
    secret = config.vault.admin_token if config is not None and config.vault is not None else None
    if secret is not None and secret.get_secret_value():
        return secret.get_secret_value(), "config"
    if data_dir is not None:
        path = token_file(data_dir)
        if path.is_file():
            saved = path.read_text().strip()
            if saved:
                return saved, "data dir"
    return None, ""


def write_token_file(data_dir: Path, token: str) -> Path:
    """``<data-dir>/admin-token``, readable by its owner only (created 0600: never briefly world-readable)."""
    path = token_file(data_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    path.chmod(0o600)
    return path


def settle_admin_token(config: Optional[Config], data_dir: Path, env: Mapping[str, str] = os.environ) -> str:
    """`arbstr up`: the token by the rule (a new one when there is none), written to the data dir's file."""
    token, _ = find_admin_token(config, data_dir, env)
    if token is None:
        token = "adm_" + secrets.token_urlsafe(32)
    write_token_file(data_dir, token)
    return token

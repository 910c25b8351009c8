"""The bus's credentials: one NKey per identity, made once in a private directory, and the server config that
admits each identity with exactly the permissions ``schemas/bus_permissions.py`` grants it.

Why NKeys (not passwords, not JWT accounts): the server's config holds only public keys, so a leaked server
config or backup lets nobody in; the client proves its key by signing the server's nonce, so no secret crosses
the wire even without TLS; and every NATS client speaks it. Decentralised JWT accounts add an operator and a
resolver for multi-tenant isolation arbstr does not need: all its parts live in one account, separated by
per-user permissions.

A seed file ``<identity>.nk`` holds the seed alone (what nats clients and tools read), 0600 in a 0700 directory.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Optional

import nkeys

from actors.runtime.connection import read_seed
from schemas.bus_permissions import IDENTITIES, Permissions, table

ROUTE_USER = "route"


def new_user_seed() -> str:
    return nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    return nkeys.from_seed(bytearray(seed.encode())).public_key.decode()


def write_private(path: Path, text: str) -> None:
    """Create with 0600 from the start: a file that is briefly world-readable has leaked already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class BusCredentials:
    """The seeds of every identity in one directory (``<data-dir>/bus`` for ``arbstr up``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def ensure(cls, directory: Path) -> "BusCredentials":
        """Make whatever is missing; what exists is kept (restarts keep their identities)."""
        creds = cls(private_dir(Path(directory)))
        for identity in IDENTITIES:
            if not creds.path(identity).exists():
                creds.rotate(identity)
        if not creds._route_path.exists():
            write_private(creds._route_path, secrets.token_urlsafe(32) + "\n")
        return creds

    def path(self, identity: str) -> Path:
        if identity not in IDENTITIES:
            raise ValueError(f"unknown bus identity {identity!r}; one of {', '.join(IDENTITIES)}")
        return self.directory / f"{identity}.nk"

    def rotate(self, identity: str) -> str:
        """A new key for ``identity``; the server admits it after its config is rewritten and reloaded."""
        seed = new_user_seed()
        write_private(self.path(identity), seed + "\n")  # the seed alone: what nats clients and tools read
        return public_key(seed)

    def seed(self, identity: str) -> str:
        return read_seed(self.path(identity))

    def public_key(self, identity: str) -> str:
        return public_key(self.seed(identity))

    @property
    def _route_path(self) -> Path:
        return self.directory / "route.secret"

    @property
    def route_password(self) -> str:
        return self._route_path.read_text().strip()

    def authorization_conf(self, test_user: Optional[str] = None) -> str:
        """The server's ``authorization`` block. ``test_user`` (test fixtures only) adds an unrestricted user
        that connections without credentials are mapped to, so test code may talk to the bus directly while
        every component the harness starts runs under its own identity."""
        users = [_user_entry(self.public_key(i), p) for i, p in table().items()]
        lines = ["authorization {", "  users = ["]
        lines += [f"    {u}" for u in users]
        if test_user:
            lines.append(f"    {json.dumps({'user': test_user, 'password': secrets.token_urlsafe(24)})}")
        lines += ["  ]", "}"]
        if test_user:
            lines.append(f"no_auth_user: {json.dumps(test_user)}")
        return "\n".join(lines) + "\n"

    def cluster_authorization_conf(self) -> str:
        """Routes between cluster nodes authenticate too (one shared secret; only servers know it)."""
        return ("  authorization {\n"
                f"    user: {json.dumps(ROUTE_USER)}\n    password: {json.dumps(self.route_password)}\n  }}\n")

    def route_url(self, host_port: str) -> str:
        return f"nats://{ROUTE_USER}:{self.route_password}@{host_port}"


def _user_entry(nkey: str, perms: Permissions) -> str:
    # JSON is valid NATS config, and quoting keeps '$JS.API…' literal (unquoted '$X' would be a variable).
    entry: dict[str, object] = {
        "nkey": nkey,
        "permissions": {"publish": {"allow": list(perms.publish)}, "subscribe": {"allow": list(perms.subscribe)}},
    }
    if perms.responds:
        entry["permissions"]["allow_responses"] = True  # type: ignore[index]
    return json.dumps(entry)

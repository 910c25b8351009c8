"""Bearer and admin tokens: stored and compared as hashes, never as the token."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional

from schemas import subjects
from schemas.config import Config
from schemas.errors import ArbstrError


def token_hash(token: str) -> str:
    """How every bearer token is stored and compared: its sha256, never the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def admin_token_hash(config: Config) -> Optional[str]:
    """The admin token's hash ($ARBSTR_ADMIN_TOKEN wins, else [vault] admin_token: the rule of
    arbstr/admin_token.py, whose data-dir file `arbstr up` hands over in the environment); None: admin is off."""
    value = os.environ.get("ARBSTR_ADMIN_TOKEN", "")
    if not value and config.vault is not None and config.vault.admin_token is not None:
        value = config.vault.admin_token.get_secret_value()
    return token_hash(value) if value else None


def check_admin(headers: dict[str, str], expected_hash: Optional[str]) -> None:
    """The admin token a command carries, against this actor's own hash of it (constant time)."""
    if expected_hash is None:
        raise ArbstrError(403, "no admin token is configured for this service", code="admin_disabled")
    presented = headers.get(subjects.H_ADMIN_AUTH, "")
    try:
        digest = token_hash(presented)
    except UnicodeEncodeError:
        digest = ""
    if not presented or not hmac.compare_digest(digest, expected_hash):
        raise ArbstrError(401, "this command needs the operator's admin token", code="admin_proof_required")

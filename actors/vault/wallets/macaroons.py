"""Reading an LND macaroon well enough to know what it allows, before the vault trusts a node with it.

A macaroon file is the v2 binary format: a version byte (2), then packets ``field type (varint), length
(varint), data``, in sections closed by an end-of-section byte 0 — header (location?, identifier), one section
per caveat (location?, identifier, verification id?), an empty section, then the signature packet.
LND's identifier is a version byte (3) followed by a protobuf ``MacaroonId {bytes nonce = 1; bytes storageId = 2;
repeated Op ops = 3}`` with ``Op {string entity = 1; repeated string actions = 2}``: the permissions are in the
identifier, covered by the signature, so reading them needs no key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Iterator

# What the vault calls and nothing more: GetInfo (info:read), AddInvoice (invoices:write), SubscribeInvoices,
# LookupInvoice and ListInvoices (invoices:read), DecodePayReq, ChannelBalance and TrackPaymentV2
# (offchain:read), SendPaymentV2 (offchain:write).
VAULT_PERMISSIONS: frozenset[tuple[str, str]] = frozenset({
    ("info", "read"), ("invoices", "read"), ("invoices", "write"), ("offchain", "read"), ("offchain", "write")})
BAKE_HINT = "lncli bakemacaroon info:read invoices:read invoices:write offchain:read offchain:write"

_FIELD_EOS, _FIELD_LOCATION, _FIELD_IDENTIFIER, _FIELD_VID, _FIELD_SIGNATURE = 0, 1, 2, 4, 6
_LND_ID_VERSION = 3


class MacaroonError(ValueError):
    """Not a macaroon we can read. Messages never quote the macaroon's bytes (it is a bearer secret)."""


@dataclass(frozen=True)
class Caveat:
    identifier: bytes
    verification_id: bytes = b""  # non-empty: a third-party caveat
    location: str = ""


@dataclass(frozen=True)
class Macaroon:
    location: str
    identifier: bytes
    caveats: tuple[Caveat, ...]
    signature: bytes


@dataclass(frozen=True)
class LndMacaroonId:
    nonce: bytes
    storage_id: bytes
    ops: tuple[tuple[str, tuple[str, ...]], ...]  # (entity, actions)

    @property
    def permissions(self) -> frozenset[tuple[str, str]]:
        return frozenset((entity, action) for entity, actions in self.ops for action in actions)


# --- varints (the same encoding in the macaroon framing and in protobuf) ---------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise MacaroonError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise MacaroonError("varint too long")


# --- the v2 binary framing ---------------------------------------------------------------------------------
def _packet(data: bytes, pos: int) -> tuple[int, bytes, int]:
    field, pos = _varint(data, pos)
    if field == _FIELD_EOS:
        return field, b"", pos
    length, pos = _varint(data, pos)
    if pos + length > len(data):
        raise MacaroonError("a field runs past the end of the macaroon")
    return field, data[pos:pos + length], pos + length


def _section(data: bytes, pos: int) -> tuple[list[tuple[int, bytes]], int]:
    packets: list[tuple[int, bytes]] = []
    while True:
        if pos >= len(data):
            raise MacaroonError("a section runs past the end of the macaroon")
        field, value, pos = _packet(data, pos)
        if field == _FIELD_EOS:
            return packets, pos
        if packets and field <= packets[-1][0]:
            raise MacaroonError("fields out of order")
        packets.append((field, value))


def decode(data: bytes) -> Macaroon:
    """A v2 binary macaroon (what LND writes to its .macaroon files)."""
    if not data or data[0] != 2:
        raise MacaroonError("not a version 2 binary macaroon")
    header, pos = _section(data, 1)
    location = ""
    if header and header[0][0] == _FIELD_LOCATION:
        location = header.pop(0)[1].decode("utf-8", "replace")
    if len(header) != 1 or header[0][0] != _FIELD_IDENTIFIER:
        raise MacaroonError("invalid macaroon header")
    identifier = header[0][1]
    caveats: list[Caveat] = []
    while True:
        section, pos = _section(data, pos)
        if not section:
            break
        cav_location = ""
        if section[0][0] == _FIELD_LOCATION:
            cav_location = section.pop(0)[1].decode("utf-8", "replace")
        if not section or section[0][0] != _FIELD_IDENTIFIER:
            raise MacaroonError("a caveat has no identifier")
        cid = section.pop(0)[1]
        vid = b""
        if section:
            if len(section) != 1 or section[0][0] != _FIELD_VID:
                raise MacaroonError("unexpected field in a caveat")
            vid = section[0][1]
        caveats.append(Caveat(cid, vid, cav_location))
    field, signature, pos = _packet(data, pos)
    if field != _FIELD_SIGNATURE or len(signature) != 32:
        raise MacaroonError("no valid signature")
    if pos != len(data):
        raise MacaroonError("trailing bytes after the signature")
    return Macaroon(location, identifier, tuple(caveats), signature)


# --- LND's identifier: protobuf, decoded by hand (three fields, two message types) --------------------------
def _proto_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field; length-delimited values as bytes, varints as int."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise MacaroonError("a protobuf field runs past the end of the identifier")
            yield number, data[pos:pos + length]
            pos += length
        elif wire in (1, 5):  # fixed64 / fixed32: not in MacaroonId, skipped like any unknown field
            pos += 8 if wire == 1 else 4
        else:
            raise MacaroonError(f"unsupported protobuf wire type {wire}")


def parse_lnd_id(identifier: bytes) -> LndMacaroonId:
    if identifier[:1] == b"A":  # a v1-era macaroon carries the id base64url-encoded
        try:
            identifier = base64.urlsafe_b64decode(identifier + b"=" * (-len(identifier) % 4))
        except ValueError:
            raise MacaroonError("identifier is not base64") from None
    if not identifier or identifier[0] != _LND_ID_VERSION:
        raise MacaroonError("not an LND macaroon (identifier version is not 3)")
    nonce, storage_id = b"", b""
    ops: list[tuple[str, tuple[str, ...]]] = []
    for number, value in _proto_fields(identifier[1:]):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            nonce = value
        elif number == 2:
            storage_id = value
        elif number == 3:
            entity, actions = "", []
            for n, v in _proto_fields(value):
                if isinstance(v, bytes) and n == 1:
                    entity = v.decode("utf-8", "replace")
                elif isinstance(v, bytes) and n == 2:
                    actions.append(v.decode("utf-8", "replace"))
            ops.append((entity, tuple(actions)))
    if not ops:
        raise MacaroonError("the macaroon names no permissions")
    return LndMacaroonId(nonce, storage_id, tuple(ops))


def permissions(data: bytes) -> frozenset[tuple[str, str]]:
    return parse_lnd_id(decode(data).identifier).permissions


def check_vault_macaroon(data: bytes) -> frozenset[tuple[str, str]]:
    """The macaroon's permissions if they are exactly what the vault needs; ``MacaroonError`` otherwise.

    More than needed is refused because a leaked vault macaroon must not be able to move on-chain funds, open
    channels or mint new macaroons; less is refused so a bad macaroon fails at start, not at the first payout.
    """
    perms = permissions(data)
    extra = sorted(f"{e}:{a}" for e, a in perms - VAULT_PERMISSIONS)
    missing = sorted(f"{e}:{a}" for e, a in VAULT_PERMISSIONS - perms)
    if extra:
        raise MacaroonError("the LND macaroon grants more than the vault needs (" + ", ".join(extra)
                            + "); bake one with: " + BAKE_HINT)
    if missing:
        raise MacaroonError("the LND macaroon lacks permissions the vault needs (" + ", ".join(missing)
                            + "); bake one with: " + BAKE_HINT)
    return perms

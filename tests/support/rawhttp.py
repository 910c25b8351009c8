"""HTTP over a raw socket, for requests no client library will send: bytes that are not UTF-8 in a header, header
lines over the parser's limit, a head sent slowly."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Optional

import orjson


@dataclass
class RawReply:
    status: int
    head: bytes
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def request_bytes(method: str, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: arbstr.test", b"Connection: close"]
    lines += [k + b": " + v for k, v in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def parse_reply(raw: bytes) -> RawReply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return RawReply(status, head, body)


async def send_raw(base_url: str, data: bytes, timeout_s: float = 15.0) -> RawReply:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    return parse_reply(raw)


async def raw_request(base_url: str, method: str, path: str | bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes = b"") -> RawReply:
    target = path if isinstance(path, bytes) else path.encode()
    return await send_raw(base_url, request_bytes(method, target, headers, body))

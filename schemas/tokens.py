"""Local token estimate, identical wherever it runs (gateway, router, pricing); needs no network.

A BPE tokenizer averages ~4 characters of English per token; non-ASCII text (CJK, emoji) is closer to
one token per character. We over-estimate slightly on purpose: an estimate feeds reservations, and a
reservation that is too small is worse than one that is a little large.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    non_ascii = sum(1 for ch in text if ord(ch) > 127) if not text.isascii() else 0
    ascii_chars = len(text) - non_ascii
    return -(-ascii_chars // 4) + non_ascii


def estimate_prompt_tokens(value: Any) -> int:
    """A completions ``prompt`` / embeddings ``input``: each string estimated on its own, a token-id array by its
    length (a list of them: summed). Items are counted one by one, as an upstream bills them — estimating the joined
    text instead would come out lower, and an estimate feeds the hold."""
    if isinstance(value, str):
        return estimate_text_tokens(value)
    if not isinstance(value, list):
        return 0
    if value and all(isinstance(v, int) for v in value):
        return len(value)
    return sum(estimate_text_tokens(v) if isinstance(v, str) else len(v) if isinstance(v, list) else 0
               for v in value)


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string or a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def estimate_messages_tokens(messages: Iterable[dict[str, Any]]) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(content_text(message.get("content")))
        tool_calls = message.get("tool_calls")
        if tool_calls:
            total += estimate_text_tokens(str(tool_calls))
    return total


def responses_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Responses API ``instructions`` + ``input`` as chat-style messages, for the token estimate
    (the gateway and the mock upstream must count a Responses prompt identically)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "developer", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            if "role" in item:
                messages.append({"role": item["role"], "content": item.get("content")})
            elif item.get("type") == "function_call_output":
                messages.append({"role": "tool", "content": item.get("output")})
            elif item.get("type") == "function_call":
                messages.append({"role": "assistant", "content": item.get("arguments")})
    return messages

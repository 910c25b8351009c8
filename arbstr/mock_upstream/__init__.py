"""A real OpenAI-compatible HTTP server that stands in for LLM providers in tests, benchmarks and the demo.

One process serves any number of providers by path prefix: ``/<provider>/v1/...`` (plain ``/v1/...`` is the
provider ``default``); a provider exists as soon as it is named. Replies are deterministic so tests can
predict them exactly:

* reply text echoes the prompt: the ASCII letters and digits of the last user text, cycled, cut into
  tokens of three characters plus a space (``"Hel "``, ``"low "``...). Every token is four ASCII
  characters, so ``schemas.tokens.estimate_text_tokens(reply) == completion_tokens`` — a gateway that has
  to count tokens itself (usage omitted) gets the same number as the usage block would have said;
* output tokens = min(``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens``, the
  ``x-mock-output-tokens`` header or the server default) per output; one token per stream chunk. As a real
  upstream: chat makes ``n`` outputs, completions ``max(n, best_of)`` per prompt (``n`` of them come back), and
  every output made is billed;
* prompt tokens = ``estimate_messages_tokens`` over the chat messages (Responses: over the input turned
  into messages, see :func:`schemas.tokens.responses_messages`); completions and embeddings: ``estimate_text_tokens``
  of each prompt string (a token-id array counts its length).

Faults are scripted per provider through ``/_mock/<provider>/faults`` (see :func:`parse_fault`) or for one
request through the ``x-mock-fault`` header; ``/_mock/<provider>/stats`` reports what was received and
what was produced, for billing tests.

One module per job: ``faults`` (the fault language), ``wire`` (pure OpenAI-format helpers), ``state``
(per-provider counters), ``api`` (the frame every request goes through, and the sending), one module per
endpoint family (``chat``, ``completions``, ``embeddings``, ``responses``, ``models``), ``control`` (the
``/_mock/`` API), ``server`` (app assembly and the socket server) and ``cli``.
"""

from .faults import Fault, FaultError, parse_fault, parse_fault_script
from .server import MOCK_UPSTREAM_KEY, MockUpstream, MockUpstreamServer, build_app, serve

__all__ = [
    "MOCK_UPSTREAM_KEY",
    "Fault",
    "FaultError",
    "MockUpstream",
    "MockUpstreamServer",
    "build_app",
    "parse_fault",
    "parse_fault_script",
    "serve",
]

"""OpenAI-shaped errors: the one error type that crosses actors, the bus and HTTP."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel

# status -> OpenAI error "type"
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_balance",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ArbstrError(Exception):
    """An error with an HTTP status and an OpenAI error body. Raised by actors and the gateway alike."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: Optional[str] = None,
        param: Optional[str] = None,
        type: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))

    @classmethod
    def from_body(cls, status: int, body: ErrorBody, headers: Optional[dict[str, str]] = None) -> "ArbstrError":
        e = body.error
        return cls(status, e.message, code=e.code, param=e.param, type=e.type, headers=headers)

    def __repr__(self) -> str:
        return f"ArbstrError({self.status}, {self.message!r}, code={self.code!r})"


def bad_request(message: str, *, param: Optional[str] = None, code: str = "invalid_request") -> ArbstrError:
    return ArbstrError(400, message, param=param, code=code)


def not_found(message: str, *, param: Optional[str] = None, code: str = "not_found") -> ArbstrError:
    return ArbstrError(404, message, param=param, code=code)


def unavailable(message: str, *, code: str = "service_unavailable", retry_after_s: Optional[int] = None) -> ArbstrError:
    headers = {"retry-after": str(retry_after_s)} if retry_after_s is not None else None
    return ArbstrError(503, message, code=code, headers=headers)


def request_id_reused(request_id: str) -> ArbstrError:
    """A request id this agent already used (charged, or still in flight): the vault's answer, and the gateway's for
    a request decided under a grant that the vault cannot see yet."""
    return ArbstrError(409, f"request id {request_id!r} was already used by this agent; send a new X-Request-Id",
                       code="request_id_reused", param="X-Request-Id", headers={"x-should-retry": "false"})

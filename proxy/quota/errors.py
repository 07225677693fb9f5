"""Refusals for limits, as OpenAI words them (both are 429s)::

ProxyError
├── RateLimited      429 rate_limit_exceeded: too many runs or requests now; Retry-After
│                    says when one more is admitted; the SDKs retry it
└── QuotaExceeded    429 insufficient_quota: the budget is spent; x-should-retry: false
                     (Retry-After: when the budget's period begins again)
"""

from __future__ import annotations

import math

from proxy.errors import ProxyError

__all__ = ["QuotaExceeded", "RateLimited"]


class _Limited(ProxyError):
    status_code = 429

    def __init__(self, message: str, *, retry_after: float, limit: str):
        super().__init__(message)
        #: Whole seconds, at least 1 (what the ``Retry-After`` header says).
        self.retry_after = max(1, math.ceil(retry_after))
        #: The limit that refused (a field of `proxy.quota.Limits`).
        self.limit = limit

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "retry-after": str(self.retry_after)}


class RateLimited(_Limited):
    """A concurrency, run or request-rate limit is reached; a retry after ``retry_after``
    seconds is admitted (for concurrency: may be, once a run ends)."""

    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class QuotaExceeded(_Limited):
    """The budget is spent until its period begins again; retrying sooner cannot help."""

    error_type = "insufficient_quota"
    code = "insufficient_quota"

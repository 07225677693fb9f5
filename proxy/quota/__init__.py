"""Limits per collection and per key: concurrent runs, runs per hour, requests per minute and
a budget per day or month, checked before anything starts (see `proxy.quota.service`)."""

from proxy.quota.errors import QuotaExceeded, RateLimited
from proxy.quota.limits import LIMIT_NAMES, Effective, Limits, Period
from proxy.quota.report import limits_report
from proxy.quota.service import QuotaConfig, Quotas

__all__ = [
    "LIMIT_NAMES",
    "Effective",
    "Limits",
    "Period",
    "QuotaConfig",
    "QuotaExceeded",
    "Quotas",
    "RateLimited",
    "limits_report",
]

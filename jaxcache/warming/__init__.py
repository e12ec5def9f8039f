"""``jaxcache warm``: compile ahead of time what the runs will need, and prove they hit it."""

from __future__ import annotations

from jaxcache.warming.plan import (
    DEFAULT_SIZE,
    PROBLEMS,
    Target,
    WarmPlan,
    build_plan,
    plan_from_file,
    plan_from_pyproject,
    plan_from_table,
)
from jaxcache.warming.runner import KernelResult, WarmReport, warm
from jaxcache.warming.verify import VerifyResult, verify

__all__ = [
    "DEFAULT_SIZE",
    "PROBLEMS",
    "KernelResult",
    "Target",
    "VerifyResult",
    "WarmPlan",
    "WarmReport",
    "build_plan",
    "plan_from_file",
    "plan_from_pyproject",
    "plan_from_table",
    "verify",
    "warm",
]

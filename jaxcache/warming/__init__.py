"""``jaxcache warm``: compile ahead of time what the runs will need, and prove they hit it."""

from __future__ import annotations

from jaxcache.warming.plan import (
    DEFAULT_SIZE,
    PROBLEMS,
    Target,
    WarmPlan,
    build_plan,
    choose_plan,
    plan_from_file,
    plan_from_pyproject,
    plan_from_table,
)
from jaxcache.warming.preflight import Preflight, preflight
from jaxcache.warming.runner import KernelResult, WarmInterrupted, WarmReport, warm
from jaxcache.warming.verify import VerifyResult, verify

__all__ = [
    "DEFAULT_SIZE",
    "PROBLEMS",
    "KernelResult",
    "Preflight",
    "Target",
    "VerifyResult",
    "WarmInterrupted",
    "WarmPlan",
    "WarmReport",
    "build_plan",
    "choose_plan",
    "plan_from_file",
    "plan_from_pyproject",
    "plan_from_table",
    "preflight",
    "verify",
    "warm",
]

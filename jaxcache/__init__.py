"""jaxcache: configure, inspect, prune, check and warm JAX's persistent compilation cache.

The library behind the ``jaxcache`` command. Importing it imports neither JAX
nor the modules a caller does not use (``jaxcache hook`` must start fast).

Example:
    >>> import jaxcache
    >>> jaxcache.configure()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use.
_EXPORTS = {
    "CheckReport": "integrity", "Finding": "integrity", "check": "integrity", "repair": "integrity",
    "Configured": "configuration", "configure": "configuration",
    "CacheDirError": "errors", "ConfirmationRequired": "errors", "JaxCacheError": "errors",
    "NotACacheError": "errors", "UsageError": "errors",
    "PrunePlan": "prune", "PruneResult": "prune", "execute": "prune", "plan_prune": "prune",
    "CacheEntry": "scanning", "CacheInfo": "scanning", "scan": "scanning",
    "Settings": "settings", "resolve": "settings",
    "Summary": "summary", "inspect_cache": "summary", "summarize": "summary",
    "WarmPlan": "warming", "WarmReport": "warming", "build_plan": "warming", "choose_plan": "warming",
    "verify": "warming", "warm": "warming",
    "RunReport": "runstats", "run": "runstats",
    "HookResult": "prerun", "hook": "prerun",
}
__all__ = [
    "CacheDirError",
    "CacheEntry",
    "CacheInfo",
    "CheckReport",
    "Configured",
    "ConfirmationRequired",
    "Finding",
    "HookResult",
    "JaxCacheError",
    "NotACacheError",
    "PrunePlan",
    "PruneResult",
    "RunReport",
    "Settings",
    "Summary",
    "UsageError",
    "WarmPlan",
    "WarmReport",
    "build_plan",
    "check",
    "choose_plan",
    "configure",
    "execute",
    "hook",
    "inspect_cache",
    "plan_prune",
    "repair",
    "resolve",
    "run",
    "scan",
    "summarize",
    "verify",
    "warm",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"jaxcache.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxcache' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs
    from jaxcache.integrity import CheckReport, Finding, check, repair
    from jaxcache.configuration import Configured, configure
    from jaxcache.errors import CacheDirError, ConfirmationRequired, JaxCacheError, NotACacheError, UsageError
    from jaxcache.prerun import HookResult, hook
    from jaxcache.prune import PrunePlan, PruneResult, execute, plan_prune
    from jaxcache.runstats import RunReport, run
    from jaxcache.scanning import CacheEntry, CacheInfo, scan
    from jaxcache.settings import Settings, resolve
    from jaxcache.summary import Summary, inspect_cache, summarize
    from jaxcache.warming import WarmPlan, WarmReport, build_plan, choose_plan, verify, warm

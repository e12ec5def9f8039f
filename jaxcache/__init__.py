"""jaxcache: configure, inspect, prune and check JAX's persistent compilation cache.

The library behind the ``jaxcache`` command. Importing it does not import JAX.

Example:
    >>> import jaxcache
    >>> jaxcache.configure()  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from jaxcache.check import CheckReport, Finding, check, repair
from jaxcache.configure import Configured, configure
from jaxcache.errors import CacheDirError, ConfirmationRequired, JaxCacheError, NotACacheError, UsageError
from jaxcache.prune import PrunePlan, PruneResult, execute, plan_prune
from jaxcache.scan import CacheEntry, CacheInfo, scan
from jaxcache.settings import Settings, resolve
from jaxcache.summary import Summary, inspect_cache, summarize

__all__ = [
    "CacheDirError",
    "CacheEntry",
    "CacheInfo",
    "CheckReport",
    "Configured",
    "ConfirmationRequired",
    "Finding",
    "JaxCacheError",
    "NotACacheError",
    "PrunePlan",
    "PruneResult",
    "Settings",
    "Summary",
    "UsageError",
    "check",
    "configure",
    "execute",
    "inspect_cache",
    "plan_prune",
    "repair",
    "resolve",
    "scan",
    "summarize",
]

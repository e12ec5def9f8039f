"""The ``jaxcache`` command: the Click CLI, except for a plain ``hook``, served without it.

``eval "$(jaxcache hook)"`` runs before every job, so what it costs with nothing
to do matters (the goal: under 100 ms). Importing Click and the CLI module is
about a third of that, so the common forms, ``[--cache-dir DIR] hook [--shell
SHELL]``, run here on the library alone. Anything else (other options, help,
any error, which the CLI words as for every command, and an upgrade prune,
which the CLI asks about) goes to the CLI; the hook is idempotent, so running
it again there is harmless.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_SHELLS = ("bash", "zsh", "fish")


def plain_hook(args: Sequence[str]) -> tuple[str | None, str] | None:
    """``(cache_dir, shell)`` if ``args`` are a plain hook call, else None."""
    args = list(args)
    cache_dir = None
    if args[:1] == ["--cache-dir"] and len(args) >= 2:
        cache_dir, args = args[1], args[2:]
    elif args and args[0].startswith("--cache-dir="):
        cache_dir, args = args[0].partition("=")[2], args[1:]
    if args[:1] != ["hook"] or (cache_dir is not None and not cache_dir.strip()):
        return None
    rest = args[1:]
    if not rest:
        return cache_dir, "bash"
    if len(rest) == 2 and rest[0] == "--shell" and rest[1] in _SHELLS:
        return cache_dir, rest[1]
    if len(rest) == 1 and rest[0].startswith("--shell=") and rest[0].partition("=")[2] in _SHELLS:
        return cache_dir, rest[0].partition("=")[2]
    return None


def main() -> None:
    fast = plain_hook(sys.argv[1:])
    if fast is not None:
        from jaxcache.errors import JaxCacheError
        from jaxcache.prerun import hook, render
        from jaxcache.settings import resolve

        cache_dir, shell = fast
        try:
            # No approver: an upgrade prune is left to the CLI, which asks or refuses.
            result = hook(resolve(cache_dir=cache_dir, argument_source="--cache-dir"))
        except JaxCacheError:
            pass  # the CLI reports it, in the words every command uses
        else:
            if result.upgrade_prune != "refused":
                for message in result.messages:
                    sys.stderr.write(f"jaxcache hook: {message}\n")
                sys.stdout.write(render(result.env, shell) + "\n")
                sys.stdout.flush()
                return
    from jaxcache.cli import main as cli_main

    cli_main()

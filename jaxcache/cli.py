"""The ``jaxcache`` command: a thin Click layer over the library.

Each command resolves settings, calls the library and prints. Library errors
become one line on stderr and an exit code in one place (:class:`_Group`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from jaxcache import __version__, display, provenance
from jaxcache.errors import CacheDirError, ConfirmationRequired, Declined, JaxCacheError
from jaxcache.settings import Settings, resolve
from jaxcache.units import parse_duration, parse_size

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class _Group(click.Group):
    """Turns expected failures into one line and an exit code: 2 for usage, 1 otherwise."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `jaxcache`: the help, as Click shows it
                click.echo(e.format_message(), err=True)
                sys.exit(e.exit_code)
            where = e.ctx.command_path if e.ctx is not None else "jaxcache"
            click.echo(f"jaxcache: error: {e.format_message()} (see '{where} --help')", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"jaxcache: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(128 + signal.SIGINT)  # as a shell reports Ctrl-C
        sys.exit(code if isinstance(code, int) else 0)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        # The global option is accepted after the command too: `jaxcache inspect --cache-dir X`.
        cmd.params.append(click.Option(["--cache-dir"], metavar="PATH", expose_value=False,
                                       callback=_take_cache_dir, help="Cache root (as before the command)."))
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warnings(warnings.showwarning)  # as every other message
                return super().invoke(ctx)
        except JaxCacheError as e:
            click.echo(f"jaxcache: error: {e}", err=True)
            sys.exit(e.exit_code)
        except PermissionError as e:
            click.echo(f"jaxcache: error: permission denied: {e.filename or e}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            # `jaxcache ls | head`: the reader has what it wanted. Quiet, like a tool that died
            # of SIGPIPE; stdout goes to /dev/null so the exit flush cannot raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"jaxcache: error: {e.strerror or e}{where}", err=True)
            sys.exit(1)


def _one_line_warnings(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints jaxcache's own warnings as one line; others as before."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        text = str(message)
        if not text.startswith("jaxcache"):
            fallback(message, category, filename, lineno, file, line)
            return
        click.echo(f"jaxcache: warning: {text.removeprefix('jaxcache: ')}", err=True)

    return show


def _take_cache_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    if not value.strip():
        # An unset "$VAR" must never mean "the current folder" for a command that deletes.
        raise click.BadParameter("is empty", ctx=ctx, param_hint="'--cache-dir'")
    ctx.ensure_object(dict)["cache_dir"] = value


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _settings(ctx: click.Context) -> Settings:
    settings = resolve(cache_dir=ctx.obj.get("cache_dir"), argument_source="--cache-dir")
    for note in settings.skipped:
        click.echo(f"jaxcache: warning: {note}", err=True)
    return settings


def _installed_jaxlib() -> str | None:
    versions = provenance.installed_versions()
    return versions.jaxlib if versions else None


def _confirm(question: str, *, yes: bool, as_json: bool, verb: str = "delete") -> None:
    """Asks on a terminal; refuses (never hangs) without one, or with --json, unless --yes.

    Every command that deletes or resets goes through here: a refusal exits 2
    (a usage matter: add --yes), an answer of no exits 1, and neither changes anything.
    """
    if yes:
        return
    if as_json or not sys.stdin.isatty():
        raise ConfirmationRequired(f"refusing to {verb} without --yes (no terminal to ask on); "
                                   "preview with --dry-run")
    if not click.confirm(question, default=False, err=True):
        raise Declined("declined: nothing was changed")


def _version_order(version: str) -> tuple[int, ...]:
    from jaxcache.prerun import version_key

    return version_key(version)


def _scan(settings: Settings, *, quick: bool = True):
    """A scan for listing and planning: sizes from the index where provably unchanged
    (execute() re-checks every file before deleting it), last uses always fresh."""
    from jaxcache.scanning import scan

    return scan(settings.root, quick=quick)


def _bucket(settings: Settings):
    """The cache in an object store that ``--cache-dir s3://...`` names."""
    from jaxcache.bucket import BucketCache

    return BucketCache(settings.url)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")

# Work on more items than this shows progress on stderr: a bar on a terminal, else a line now and then.
_PROGRESS_FROM = 1000
_PROGRESS_LINE_SECS = 2.0


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A callback taking the number of items done so far, or None when the work is small.

    On a terminal it draws a bar; without one (a job log, CI) it prints a line at
    most every couple of seconds, so long work is never silent, and short work
    prints nothing.
    """
    if total <= _PROGRESS_FROM:
        yield None
        return
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            yield lambda done: bar.update(done - bar.pos)
        return
    import time

    state = {"shown": time.monotonic(), "done": 0}

    def line(done: int) -> None:
        state["done"] = done
        if time.monotonic() - state["shown"] >= _PROGRESS_LINE_SECS:
            state["shown"] = time.monotonic()
            click.echo(f"{label}: {done}/{total} ({100 * done // total}%)", err=True)

    start = state["shown"]
    yield line
    if state["shown"] != start:  # it spoke before: say it finished
        click.echo(f"{label}: {state['done']}/{total} done", err=True)


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--cache-dir",
    metavar="PATH",
    help="Cache root (default: JAXCACHE_DIR, JAX_COMPILATION_CACHE_DIR, [tool.jaxcache], user config, platformdirs); "
         "s3://bucket/prefix or gs://... for a cache JAX keeps in a bucket (inspect, ls, check, prune, clear).",
)
@click.version_option(__version__, "--version", prog_name="jaxcache")
@click.pass_context
def main(ctx: click.Context, cache_dir: str | None) -> None:
    """Configure, warm, inspect, prune and check JAX's persistent compilation cache,
    and run jobs with it.

    Start with `jaxcache warm` (compile ahead of time), `jaxcache run -- CMD`
    (run with the cache and see its hits), `jaxcache inspect` (what is in it).

    Example: jaxcache inspect
    """
    ctx.ensure_object(dict)
    ctx.obj.setdefault("cache_dir", None)
    _take_cache_dir(ctx, None, cache_dir)  # type: ignore[arg-type]


@main.command("dir")
@click.option("--jax", "jax_folder", is_flag=True, help="Print the folder JAX writes into (the version folder).")
@click.pass_context
def dir_command(ctx: click.Context, jax_folder: bool) -> None:
    """Print the resolved cache folder, alone on a line.

    Example: ls "$(jaxcache dir)"
    """
    settings = _settings(ctx)
    if settings.url:
        from jaxcache.configuration import bucket_jax_dir

        click.echo(bucket_jax_dir(settings, provenance.installed_versions()) if jax_folder else settings.url)
        return
    if settings.root.exists() and not settings.root.is_dir():
        raise CacheDirError(f"{settings.root} is a file, not a folder")
    if jax_folder:
        click.echo(provenance.jax_dir(settings.root, settings.layout.value, provenance.installed_versions()))
    else:
        click.echo(settings.root)


@main.command("config")
@json_option
@click.pass_context
def config_command(ctx: click.Context, as_json: bool) -> None:
    """Show each setting in force and where it came from.

    Example: jaxcache config --json
    """
    from jaxcache.configuration import jax_options

    settings = _settings(ctx)
    versions = provenance.installed_versions()
    if settings.url:  # what configure() hands JAX for a bucket
        from jaxcache.configuration import bucket_jax_dir, bucket_jax_options

        jax_dir: Any = bucket_jax_dir(settings, versions)
        options = bucket_jax_options(settings, jax_dir)
    else:
        jax_dir = provenance.jax_dir(settings.root, settings.layout.value, versions)
        options = jax_options(settings, jax_dir)
    if as_json:
        _emit_json(
            {
                "settings": settings.as_dict(),
                "jax_dir": str(jax_dir),
                "jax": versions.jax if versions else None,
                "jaxlib": versions.jaxlib if versions else None,
                "jax_options": options,
            }
        )
        return
    rows = [(name, v["value"], v["source"]) for name, v in settings.as_dict().items()]
    click.echo(display.table(("SETTING", "VALUE", "SOURCE"), rows))
    click.echo()
    click.echo(f"JAX writes into  {jax_dir}")
    click.echo(f"jax / jaxlib     {versions.jax if versions else '-'} / {versions.jaxlib if versions else 'not installed'}")
    click.echo("jax.config       " + ", ".join(f"{k}={v!r}" for k, v in options.items() if k != "jax_compilation_cache_dir"))


@main.command("inspect")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many functions to list (0: all).")
@json_option
@click.pass_context
def inspect_command(ctx: click.Context, top: int, as_json: bool) -> None:
    """Summarize a cache: size, versions, platforms, functions, ages, orphans.

    Example: jaxcache --cache-dir ~/.cache/jaxcache inspect
    """
    from jaxcache.summary import inspect_cache

    settings = _settings(ctx)
    if settings.url:
        from jaxcache.summary import summarize

        summary = summarize(_bucket(settings).scan(), installed_version=_installed_jaxlib())
    else:
        summary = inspect_cache(settings.root, installed_version=_installed_jaxlib())
    if as_json:
        _emit_json(summary.as_dict())
        return
    out = [
        f"Cache       {summary.cache_dir}",
        f"Entries     {summary.entries}  ({display.size(summary.bytes)} apparent, "
        f"{display.size(summary.allocated_bytes)} on disk)",
    ]
    if summary.entries:
        out += [
            f"Written     {display.ago(summary.oldest_written)} .. {display.ago(summary.newest_written)}"
            "  (last uses: `jaxcache ls --sort age`)",
        ]
    if summary.executables:
        out.append(f"Executables {summary.executables} stored whole ({display.size(summary.executables_bytes)}): "
                   "the solver's kernels, loaded without tracing")
    orphans = [f"{summary.orphan_atimes} -atime files without an entry"]
    if settings.max_size.value != -1:  # uncapped, JAX writes no -atime: their absence is normal
        orphans.append(f"{_entries(summary.without_atime)} without -atime")
    out.append(f"Orphans     {'; '.join(orphans)}; {summary.other_files} other files kept")
    click.echo("\n".join(out))
    if summary.root_entries and settings.layout.value == "versioned":
        verb = "is" if summary.root_entries == 1 else "are"
        click.echo(f"Note        {_entries(summary.root_entries)} directly in {summary.cache_dir} (written without "
                   f"jaxcache) {verb} never looked up by jaxcache's processes, which use a folder per jaxlib "
                   "version; with layout = \"flat\" both share them.")

    def group_table(title: str, groups: dict, mark: str | None = None, limit: int | None = None) -> None:
        items = list(groups.items())[:limit] if limit else list(groups.items())
        if not items:
            return
        rows = [(k + (" (installed)" if mark and k == mark else ""), g.entries, display.size(g.bytes)) for k, g in items]
        click.echo()
        click.echo(display.table((title, "ENTRIES", "SIZE"), rows, right=(1, 2)))
        if limit and len(groups) > limit:
            click.echo(f"... and {len(groups) - limit} more")

    group_table("JAXLIB VERSION", summary.by_version, mark=summary.installed_version)
    group_table("PLATFORM", summary.by_platform)
    group_table("FUNCTION", summary.by_module, limit=top)
    if summary.other_version_entries:
        click.echo()
        click.echo(
            f"{summary.other_version_entries} entries ({display.size(summary.other_version_bytes)}) were written by "
            f"other jaxlib versions and can never be hit by {summary.installed_version}: "
            "`jaxcache prune --stale` removes them."
        )


_SORTS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "size": (lambda d: d.entry.bytes, True),
    "age": (lambda d: d.entry.recency, False),
    "name": (lambda d: (d.entry.module, d.entry.key), False),
    "compile-time": (lambda d: d.measured_compile_seconds if d.measured_compile_seconds is not None
                     else (d.compile_seconds if d.compile_seconds is not None else -1), True),
}


@main.command("ls")
@click.option("--sort", "sort_by", type=click.Choice(list(_SORTS)), default="name", show_default=True,
              help="size and compile-time: largest first; age: least recently used first.")
@click.option("--name", "pattern", help="Only entries whose module name (or key) matches this glob.")
@json_option
@click.pass_context
def ls_command(ctx: click.Context, sort_by: str, pattern: str | None, as_json: bool) -> None:
    """List entries, one per row.

    Example: jaxcache ls --sort size --name 'jit_step*'
    """
    from jaxcache.summary import describe_entries

    key, reverse = _SORTS[sort_by]
    settings = _settings(ctx)
    if settings.url:
        bucket = _bucket(settings)
        details = bucket.describe(bucket.scan(), name=pattern)
    else:
        details = describe_entries(_scan(settings), name=pattern)
    details.sort(key=key, reverse=reverse)
    if as_json:
        _emit_json([d.as_dict() for d in details])
        return

    def compile_time(d: Any) -> str:
        if d.measured_compile_seconds is not None:
            return f"{d.measured_compile_seconds:.2f}s"
        if d.compile_seconds is None:
            return "-"
        return "<1s" if d.compile_seconds == 0 else f"{d.compile_seconds}s"  # JAX stores whole seconds

    def last_used(d: Any) -> str:
        # Without a recorded use only the file system's access time speaks, and it may lag (relatime).
        return display.ago(d.entry.recency) + ("" if d.entry.last_used is not None else " *")

    rows = [(d.entry.module, d.entry.key[-64:][:12], display.size(d.entry.bytes), d.entry.version or "unknown",
             d.entry.platform or "-", compile_time(d), last_used(d)) for d in details]
    click.echo(display.table(("NAME", "HASH", "SIZE", "VERSION", "PLATFORM", "COMPILE", "LAST USED"), rows,
                             right=(2, 5)))
    click.echo(f"{_entries(len(rows))}, {display.size(sum(d.entry.bytes for d in details))}", err=True)
    if any(d.entry.last_used is None for d in details):
        click.echo("* no recorded use: the write time (an object store records no reads)" if settings.url else
                   "* no recorded use: the file system's access time, which may lag (at most daily under "
                   "relatime)", err=True)


def _executables_note(count: int, size: int) -> str:
    return f" and {display.count(count, 'stored executable')} ({display.size(size)})" if count else ""


def _entries(n: int) -> str:
    return display.count(n, "entry", "entries")


def _print_plan(plan, *, dry_run: bool, limit: int = 20, out_err: bool = False) -> None:
    """The plan as a table and a summary line; on stderr where stdout carries other data (hook)."""
    rows = [(d.entry.module, d.entry.key[-64:][:12], display.size(d.entry.bytes), d.entry.version or "unknown", d.reason)
            for d in plan.deletions[:limit]]
    if rows:
        click.echo(display.table(("NAME", "HASH", "SIZE", "VERSION", "WHY"), rows, right=(2,)), err=out_err)
        if len(plan.deletions) > limit:
            click.echo(f"... and {len(plan.deletions) - limit} more", err=out_err)
    if not plan.deletions and not plan.executables:
        click.echo(f"Nothing to delete; keeping {_entries(plan.kept_entries)} ({display.size(plan.kept_bytes)}).",
                   err=out_err)
        return
    verb = "Would delete" if dry_run else "To delete:"  # a refusal may follow: not "Deleting"
    note = _executables_note(len(plan.executables), sum(e.bytes for e in plan.executables))
    click.echo(f"{verb} {_entries(len(plan.deletions))}{note}, freeing {display.size(plan.freed_bytes)}; "
               f"keeping {_entries(plan.kept_entries)} ({display.size(plan.kept_bytes)}).", err=out_err)


def _run_plan(plan, *, dry_run: bool, yes: bool, as_json: bool, bucket=None) -> None:
    """Prints the plan, asks, deletes; ``bucket``: the cache is in an object store (jaxcache.bucket)."""
    from jaxcache import prune

    execute = bucket.execute_prune if bucket is not None else prune.execute
    if not as_json:
        _print_plan(plan, dry_run=dry_run)
    if dry_run or not (plan.deletions or plan.executables):
        if as_json:
            _emit_json({"dry_run": dry_run, **plan.as_dict(), "skipped": []})
        return
    note = _executables_note(len(plan.executables), sum(e.bytes for e in plan.executables))
    _confirm(f"Delete {_entries(len(plan.deletions))}{note}?", yes=yes, as_json=as_json)
    with _progress("Deleting", len(plan.deletions)) as step:
        result = execute(plan, progress=step)
    if as_json:
        _emit_json({"dry_run": False, "cache_dir": str(plan.root), **result.as_dict(),
                    "kept_entries": plan.kept_entries, "kept_bytes": plan.kept_bytes})
    else:
        note = _executables_note(len(result.executables_deleted), sum(e.bytes for e in result.executables_deleted))
        click.echo(f"Deleted {_entries(len(result.deleted))}{note}, freed {display.size(result.freed_bytes)}.")
        for item in result.as_dict()["skipped"]:
            click.echo(f"skipped {item['key']}: {item['reason']}", err=True)


yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
dry_run_option = click.option("--dry-run", "-n", is_flag=True, help="Print the plan, delete nothing.")


@main.command("prune")
@click.option("--stale", is_flag=True, help="Entries written by a jaxlib other than the installed one.")
@click.option("--keep-version", "keep_versions", multiple=True, metavar="VERSION",
              help="With --stale: also keep this jaxlib version's entries (repeatable).")
@click.option("--older-than", metavar="DURATION", help="Entries not used for this long, e.g. 30d, 12h.")
@click.option("--max-size", metavar="SIZE", help="Then delete least recently used entries until the cache fits, e.g. 2GB.")
@click.option("--name", "pattern", metavar="GLOB", help="Entries whose module name matches, e.g. 'jit_step*'.")
@dry_run_option
@yes_option
@json_option
@click.pass_context
def prune_command(ctx: click.Context, stale: bool, keep_versions: tuple[str, ...], older_than: str | None,
                  max_size: str | None, pattern: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Delete entries by version, age, size or name. Selectors combine with AND.

    Example: jaxcache prune --stale --dry-run
    """
    from jaxcache.prune import plan_prune

    duration = parse_duration(older_than) if older_than is not None else None
    cap = parse_size(max_size) if max_size is not None else None
    if keep_versions and not stale:
        raise click.UsageError("--keep-version only applies with --stale")
    settings = _settings(ctx)
    bucket = _bucket(settings) if settings.url else None
    info = bucket.scan() if bucket else _scan(settings)
    here = sorted({f.version for f in info.folders if f.version}, key=_version_order)
    for version in keep_versions:
        if version not in here:  # a typo keeps nothing, silently: say so
            click.echo(f"jaxcache: warning: --keep-version {version}: no entries of that jaxlib version here "
                       f"(versions here: {', '.join(here) or 'none'})", err=True)
    plan = plan_prune(info, stale=stale, keep_versions=keep_versions,
                      installed_version=_installed_jaxlib(), older_than=duration, max_size=cap, name=pattern,
                      atime_resolution=bucket.atime_resolution if bucket else None)
    _run_plan(plan, dry_run=dry_run, yes=yes, as_json=as_json, bucket=bucket)


@main.command("clear")
@dry_run_option
@yes_option
@json_option
@click.pass_context
def clear_command(ctx: click.Context, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Delete every cache entry and stored executable (other files in the folder are kept).

    Example: jaxcache clear --yes
    """
    from jaxcache.prune import plan_prune

    settings = _settings(ctx)
    bucket = _bucket(settings) if settings.url else None
    plan = plan_prune(bucket.scan() if bucket else _scan(settings), everything=True)
    _run_plan(plan, dry_run=dry_run, yes=yes, as_json=as_json, bucket=bucket)


_REPAIR_WORDS = {"delete": "delete", "quarantine": "move aside", "create-atime": "create its -atime",
                 "remove-write-permission": "remove write permission", "give-to-group": "give to the group"}


@main.command("check")
@click.option("--repair", is_flag=True, help="Fix what can be fixed safely: a plan first, then a prompt (or --yes).")
@click.option("--dry-run", "-n", is_flag=True, help="With --repair: print the repair plan, change nothing.")
@click.option("--yes", "-y", is_flag=True, help="With --repair: do not ask for confirmation.")
@json_option
@click.pass_context
def check_command(ctx: click.Context, repair: bool, dry_run: bool, yes: bool, as_json: bool) -> int:
    """Verify every entry: decompresses, has a header, has its -atime; find orphans and unsafe permissions.

    Exits 1 when problems remain. --repair deletes only files it proves are
    broken cache entries (others are moved aside), after a plan and a prompt.

    Example: jaxcache check --repair --dry-run
    """
    from jaxcache import integrity

    if (dry_run or yes) and not repair:
        raise click.UsageError("--dry-run and --yes apply only with --repair")
    settings = _settings(ctx)
    bucket = _bucket(settings) if settings.url else None
    checks: Any = bucket if bucket is not None else integrity  # the same three functions, either place
    check, plan_repair, execute_repair = checks.check, checks.plan_repair, checks.execute_repair
    info = bucket.scan() if bucket else _scan(settings, quick=False)
    capped = settings.max_size.value != -1 and not bucket  # configure() never caps a bucket
    with _progress("Checking", len(info.entries)) as step:
        report = check(info, capped=capped, installed_version=_installed_jaxlib(), progress=step)
    plan = plan_repair(report) if repair else None
    planned = {r.finding: r.action for r in plan.repairs} if plan else {}
    if not as_json:
        for f in report.findings:
            action = f"  [{_REPAIR_WORDS[planned[f]]}]" if f in planned else ""
            click.echo(f"{f.severity}: {f.kind}: {f.path.name if f.key else f.path}: {f.message}{action}")
    result = None
    if plan is not None and plan.repairs:
        if not as_json:
            click.echo(f"{'Would repair' if dry_run else 'To repair:'} {_repair_summary(plan)}.", err=True)
        if not dry_run:
            _confirm(f"Repair {display.count(len(plan.repairs), 'finding')}?", yes=yes, as_json=as_json,
                     verb="repair")
            result = execute_repair(plan)
    remaining = report.remaining(result)
    if as_json:
        data = report.as_dict(result)
        if plan is not None:
            data["dry_run"] = dry_run
            data["repair_plan"] = plan.as_dict()["repairs"]
        _emit_json(data)
        return 1 if remaining else 0
    if result is not None:
        for outcome in result.outcomes:
            if outcome.status == "failed" or outcome.detail:
                status = "could not repair" if outcome.status == "failed" else outcome.status
                click.echo(f"{status}: {outcome.repair.finding.path.name}: {outcome.detail}", err=True)
        fixed = sum(1 for o in result.outcomes if o.status == "repaired")
        click.echo(f"Repaired {fixed} of {display.count(len(result.outcomes), 'finding')}.", err=True)
    summary = "no problems" if not remaining else display.count(len(remaining), "problem")
    hint = "" if not remaining or repair else "; `jaxcache check --repair` fixes what it can"
    click.echo(f"Checked {_entries(report.entries_checked)} in {report.root}: {summary}{hint}.", err=True)
    return 1 if remaining else 0


def _repair_summary(plan) -> str:
    """``delete 2, move aside 1, create its -atime 3`` in the order actions first appear."""
    counts: dict[str, int] = {}
    for r in plan.repairs:
        counts[r.action] = counts.get(r.action, 0) + 1
    return ", ".join(f"{_REPAIR_WORDS[action]} {n}" for action, n in counts.items())


def _plan_options(fn: Callable) -> Callable:
    """The options that choose what to warm (shared by warm and verify)."""
    options = [
        click.option("--problem", "problems", multiple=True, metavar="NAME",
                     help="A bundled problem: rosenbrock, bratu, spectral, curvefit, kinetics (repeatable)."),
        click.option("--size", "sizes", multiple=True, type=int, metavar="N", help="Problem size (repeatable)."),
        click.option("--jac-chunk-size", default="auto", show_default=True, metavar="N|auto"),
        click.option("--deriv-mode", type=click.Choice(["batched", "blocked"]), default="batched", show_default=True),
        click.option("--x64/--no-x64", default=False, help="The runs use jax_enable_x64 (64-bit dtypes)."),
        click.option("--platform", type=click.Choice(["cpu", "gpu", "tpu"]), help="Target backend (default: JAX's)."),
        click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Devices of the run's process (CPU: host devices)."),
        click.option("--entry", "entries", multiple=True, metavar="MODULE:FUNCTION",
                     help="Your own kernels: a function returning (name, jitted_fn, abstract_args) items."),
        click.option("--plan", "plan_file", type=click.Path(path_type=Path), help="A TOML warm plan."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _resolve_plan(ctx: click.Context, params: dict[str, Any]):
    """The plan to warm or verify, refused up front if this install lacks its backend."""
    from jaxcache.warming.plan import require_backends

    plan = _plan_from_sources(ctx, params)
    require_backends(plan)
    return plan


def _plan_from_sources(ctx: click.Context, params: dict[str, Any]):
    """The library's precedence (flags > --plan > [tool.jaxcache.warm] > default) over this command's options."""
    from jaxcache.warming.plan import PROCESS_OPTIONS, choose_plan

    given = [n for n in PROCESS_OPTIONS if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    return choose_plan(problems=params["problems"], sizes=params["sizes"], entries=params["entries"],
                       plan_file=params["plan_file"], project_dir=Path.cwd(),
                       options={n: params[n] for n in PROCESS_OPTIONS}, given=given)


def _warm_progress(as_json: bool):
    """A live line on a terminal; elsewhere (or with --json) one line per finished kernel on stderr."""
    live = not as_json and sys.stderr.isatty()

    def show(result, done: int, total: int) -> None:
        if live:
            what = f"{result.status:<8} {result.target}: {result.kernel}" if result else "preparing"
            click.echo(f"\r\033[K[{done}/{total}] {what}", err=True, nl=False)
        elif result is not None:
            took = f" ({result.compile_seconds:.2f} s)" if result.compile_seconds is not None else ""
            click.echo(f"jaxcache: warm [{done}/{total}] {result.status} {result.target}: {result.kernel or '-'}{took}",
                       err=True)

    return show


def _print_warm(report, jax_dir: Path) -> None:
    ordered = sorted(report.results, key=lambda r: r.target)  # stable: kernels keep their order
    rows = [(r.target, r.kernel or "-", r.status, "-" if r.compile_seconds is None else f"{r.compile_seconds:.2f}s",
             r.reason or "") for r in ordered]
    click.echo(display.table(("TARGET", "KERNEL", "STATUS", "COMPILE", "NOTE"), rows, right=(3,)))
    compiled, cached, failed = report.count("compiled"), report.count("cached"), report.count("failed")
    if report.interrupted:
        click.echo(f"Interrupted after {len(report.results)} of {display.count(report.planned or 0, 'kernel')} "
                   f"({compiled} compiled, {cached} already cached, {failed} failed) into {jax_dir} "
                   f"({report.seconds:.1f} s).")
    elif compiled == 0 and failed == 0:
        every = "the one kernel was" if cached == 1 else f"all {cached} kernels were"
        click.echo(f"Nothing to compile: {every} already in {jax_dir} ({report.seconds:.1f} s).")
    else:
        click.echo(f"Warmed {display.count(len(report.results), 'kernel')} into {jax_dir}: {compiled} compiled, "
                   f"{cached} already cached, {failed} failed ({report.seconds:.1f} s).")


@main.command("warm")
@_plan_options
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Worker processes (default: the number of cores).")
@click.option("--verify", "then_verify", is_flag=True, help="Then run each solve fresh and require every kernel to hit.")
@json_option
@click.pass_context
def warm_command(ctx: click.Context, jobs: int | None, then_verify: bool, as_json: bool, **params: Any) -> int:
    """Compile kernels ahead of time into the cache, so the first real run compiles nothing.

    Exits 1 if any kernel failed to compile (the others are still warmed).

    Example: jaxcache warm --problem bratu --size 32 --x64 --verify
    """
    from jaxcache.configuration import prepare_folder
    from jaxcache.warming import WarmInterrupted, preflight, warm

    settings = _settings(ctx)
    plan = _resolve_plan(ctx, params)
    checked = preflight(plan)  # entry mistakes end here: no worker started, no folder made
    jax_dir, _ = prepare_folder(settings)
    try:
        report = warm(plan, settings.root, jobs=jobs, progress=_warm_progress(as_json), checked=checked)
    except WarmInterrupted as stop:
        report = stop.report
    if not as_json and sys.stderr.isatty():
        click.echo("\r\033[K", err=True, nl=False)
    for warning in report.warnings:
        click.echo(f"jaxcache: warning: {warning}", err=True)
    verified = _verify(ctx, plan, settings, as_json) if then_verify and not report.interrupted else None
    if as_json:
        _emit_json({"cache_dir": str(settings.root), "jax_dir": str(jax_dir), "plan": plan.source, **report.as_dict(),
                    **({"verify": [v.as_dict() for v in verified]} if verified is not None else {})})
    else:
        _print_warm(report, jax_dir)
        if verified is not None:
            _print_verify(verified)
    if report.interrupted:
        raise click.Abort()
    if not report.ok:
        failed = [r for r in report.results if r.status == "failed"]
        first = failed[0]
        rest = "; the others were warmed" if len(failed) < len(report.results) else ""
        click.echo(f"jaxcache: error: {len(failed)} of {display.count(len(report.results), 'kernel')} failed{rest}; "
                   f"first: {first.target}{': ' + first.kernel if first.kernel else ''}: {first.reason}", err=True)
    return 1 if not report.ok or (verified is not None and not all(v.ok for v in verified)) else 0


def _verify(ctx: click.Context, plan, settings: Settings, as_json: bool):
    from jaxcache.warming import verify

    def show(result) -> None:
        if not as_json and sys.stderr.isatty():
            click.echo(f"\r\033[Kverified {result.target}", err=True, nl=False)

    results = verify(plan, settings.root, progress=show)
    if not as_json and sys.stderr.isatty():
        click.echo("\r\033[K", err=True, nl=False)
    return results


def _print_verify(results) -> None:
    rows = []
    for v in results:
        hits = sum(int(c.get("hits", 0)) for c in v.modules.values())
        misses = sum(int(c.get("misses", 0)) for c in v.modules.values())
        status = "ok" if v.ok else ("error" if v.error else ("MISSED " + ", ".join(v.missed_kernels)
                                                            if v.missed_kernels else "DID NOT CONVERGE"))
        rows.append((v.target, hits, misses, status, v.error or ", ".join(v.other_compiles)))
    click.echo(display.table(("TARGET", "HITS", "MISSES", "VERIFY", "NOTE"), rows, right=(1, 2)))
    bad = [v for v in results if not v.ok]
    click.echo(f"Verified {display.count(len(results), 'run')} in fresh processes: "
               + ("every kernel hit." if not bad else f"{len(bad)} with misses or errors."))


@main.command("verify")
@_plan_options
@json_option
@click.pass_context
def verify_command(ctx: click.Context, as_json: bool, **params: Any) -> int:
    """Run each warmed configuration fresh and require every solver kernel to hit the cache.

    Exits 1 on any miss, naming the kernel.

    Example: jaxcache verify --problem bratu --size 32
    """
    settings = _settings(ctx)
    plan = _resolve_plan(ctx, params)
    results = _verify(ctx, plan, settings, as_json)
    if as_json:
        _emit_json({"cache_dir": str(settings.root), "plan": plan.source, "ok": all(v.ok for v in results),
                    "runs": [v.as_dict() for v in results]})
    else:
        _print_verify(results)
    return 0 if all(v.ok for v in results) else 1


def _print_traffic(title: str, totals: dict[str, Any]) -> None:
    requests = int(totals["requests"])
    rate = f" ({100 * totals['hits'] / requests:.0f}% hit)" if requests else ""
    counted = ", ".join(display.count(int(totals[k]), noun, plural) for k, noun, plural in (
        ("requests", "compile request", None), ("hits", "hit", None), ("misses", "miss", "misses")))
    click.echo(f"{title}: {counted}{rate}; {display.count(int(totals['writes']), 'entry', 'entries')} written; "
               f"{totals['compile_seconds']:.1f} s compiling, {totals['saved_seconds']:.1f} s saved", err=True)


@main.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@click.option("--push", "push_to", metavar="REMOTE", help="Then push what the cache has and REMOTE lacks.")
@json_option
@click.pass_context
def run_command(ctx: click.Context, command: tuple[str, ...], push_to: str | None, as_json: bool) -> int:
    """Run a command with the cache configured; report its hits and misses; pass its exit code through.

    The command need not import jaxcache. With --json, the report is the last line of stdout.

    Example: jaxcache run -- python train.py --epochs 3
    """
    from jaxcache.runstats import run

    report = run(command, _settings(ctx))
    for warning in report.warnings:
        click.echo(f"jaxcache: warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        _print_traffic("jaxcache run", report.as_dict())
        rows = [(m, t.requests, t.hits, t.misses, f"{t.compile_seconds:.2f}", f"{t.saved_seconds:.2f}")
                for m, t in sorted(report.modules.items(), key=lambda kv: -kv[1].requests)]
        if rows and len(rows) <= 30:
            click.echo(display.table(("MODULE", "REQUESTS", "HITS", "MISSES", "COMPILE S", "SAVED S"), rows,
                                     right=(1, 2, 3, 4, 5)), err=True)
        _print_why(report.why, err=True, more=f"jaxcache explain --run {report.run_id}")
    if push_to:
        return _push_after_run(ctx, push_to, report.exit_code)
    return report.exit_code


def _print_why(explanations, *, err: bool = False, more: str = "jaxcache explain") -> None:
    """One line per function and reason: new, or what changed."""
    from jaxcache.explain import short_lines

    if not explanations:
        return
    click.echo(f"Why it compiled (all: `{more}`):", err=err)
    for line in short_lines(explanations):
        click.echo(f"  {line}", err=err)


@main.command("explain")
@click.option("--run", "run", default="last", show_default=True, metavar="last|N|RUN",
              help="Which run: the last, N runs back (1: the last), or a run id from --list.")
@click.option("--name", "pattern", metavar="GLOB", help="Instead: what sets apart the entries of these functions.")
@click.option("--list", "list_runs", is_flag=True, help="List the recorded runs.")
@json_option
@click.pass_context
def explain_command(ctx: click.Context, run: str, pattern: str | None, list_runs: bool, as_json: bool) -> None:
    """Why did a run compile? Each persistent-cache miss: new, or what changed.

    Runs are recorded by jaxcache.configure(), `jaxcache run` and `pytest --jaxcache`.

    Example: jaxcache explain --run last
    """
    from jaxcache import keyparts
    from jaxcache.explain import explain_entries, explain_run
    from jaxcache.prune import validate_glob

    root = _settings(ctx).root
    if not root.is_dir():
        raise CacheDirError(f"no cache folder at {root}")
    run_given = ctx.get_parameter_source("run") == click.core.ParameterSource.COMMANDLINE
    if sum([list_runs, pattern is not None, run_given]) > 1:
        raise click.UsageError("give one of --run, --name and --list")
    if list_runs:
        rows = []
        for path in reversed(keyparts.list_runs(root)):
            headers, misses = keyparts.load_run(path)
            argv = " ".join(headers[0].get("argv") or []) if headers else ""
            rows.append({"run": path.stem, "misses": len({m.get("key") for m in misses}), "argv": argv})
        if as_json:
            _emit_json(rows)
        else:
            click.echo(display.table(("RUN", "MISSES", "COMMAND"), [(r["run"], r["misses"], r["argv"][:80])
                                                                   for r in rows], right=(1,)))
        return
    if pattern is not None:
        explained = explain_entries(root, validate_glob(pattern))
        if not explained:
            raise JaxCacheError(f"no entries of functions matching {pattern!r} in {root}")
        if as_json:
            _emit_json([e.as_dict() for e in explained])
            return
        for e in explained:
            what = e.note if e.verdict != "changed" else "; ".join(d.what for d in e.differences)
            click.echo(f"{e.module} {e.key[-64:][:12]}: {what}")
        return
    result = explain_run(root, run)
    if as_json:
        _emit_json(result.as_dict())
        return
    if not result.explanations:
        click.echo(f"Run {result.run} missed nothing jaxcache recorded.")
        return
    click.echo(f"Run {result.run} ({' '.join(result.argv)[:80]}): "
               f"{display.count(len(result.explanations), 'miss', 'misses')}")
    for e in result.explanations:
        click.echo(f"{e.module}: {e.summary}")
        for d in e.differences:
            if d.hint:
                click.echo(f"    {d.hint}")


@main.command("stats")
@click.option("--zero", "-z", is_flag=True, help="Reset the cumulative figures (shown first; asks, or --yes).")
@click.option("--dry-run", "-n", is_flag=True, help="With --zero: show what would be reset, reset nothing.")
@click.option("--yes", "-y", is_flag=True, help="With --zero: do not ask for confirmation.")
@json_option
@click.pass_context
def stats_command(ctx: click.Context, zero: bool, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Cumulative hits and misses of `jaxcache run` in this cache (like ccache -s / -z).

    Example: jaxcache stats --zero --yes
    """
    from jaxcache.runstats import load_stats, zero_stats

    if (dry_run or yes) and not zero:
        raise click.UsageError("--dry-run and --yes apply only with --zero")
    settings = _settings(ctx)
    data = load_stats(settings.root)  # with --zero: what is being reset
    data = {k: round(v, 3) if isinstance(v, float) and k != "since" else v for k, v in data.items()}
    data["since"] = display.iso(data["since"])
    if not as_json:
        since = f" since {data['since']}" if data["since"] else ""
        click.echo(f"{display.count(int(data['runs']), 'run')}{since}")
        requests = int(data["requests"])
        click.echo(display.table(("", ""), [
            ("compile requests", requests),
            ("hits", f"{data['hits']}" + (f" ({100 * data['hits'] / requests:.0f}%)" if requests else "")),
            ("misses", data["misses"]),
            ("entries written", data["writes"]),
            ("seconds compiling", f"{data['compile_seconds']:.1f}"),
            ("seconds saved", f"{data['saved_seconds']:.1f}"),
        ]).split("\n", 1)[1])
    zeroed = False
    if zero and not dry_run:
        _confirm("Reset these figures to zero?", yes=yes, as_json=as_json, verb="reset the figures")
        zero_stats(settings.root)
        zeroed = True
    if as_json:
        _emit_json({"cache_dir": str(settings.root), **data, "zeroed": zeroed, "dry_run": dry_run})
    elif zero:
        click.echo("Would reset the figures above to zero." if dry_run
                   else "Zeroed: the figures above start again from nothing.", err=True)


@main.command("hook")
@click.option("--shell", type=click.Choice(["bash", "zsh", "fish"]), default="bash", show_default=True)
@click.option("--warm", "then_warm", is_flag=True, help="Also warm what this jaxlib has not warmed yet.")
@click.option("--keep-version", "keep_versions", multiple=True, metavar="VERSION",
              help="Never prune this jaxlib version's entries on an upgrade (repeatable).")
@click.option("--dry-run", "-n", is_flag=True, help="After an upgrade: print what would be pruned, prune nothing.")
@click.option("--yes", "-y", is_flag=True, help="After an upgrade: prune without asking (job scripts, CI).")
@click.option("--remote", metavar="REMOTE", help="Pull from REMOTE first (default: the `remote` setting).")
@json_option
@click.pass_context
def hook_command(ctx: click.Context, shell: str, then_warm: bool, keep_versions: tuple[str, ...], dry_run: bool,
                 yes: bool, remote: str | None, as_json: bool) -> int:
    """Prepare the cache before a job and print the environment to export. Idempotent and fast.

    After a jaxlib upgrade it prunes the entries the new version can never hit,
    like `prune --stale`: with --yes, or after asking on a terminal. Without
    either it prunes nothing, still prints the environment, and exits 2.

    Example: eval "$(jaxcache hook --shell bash --yes)"
    """
    from jaxcache.prerun import hook, render

    def approve(plan) -> bool:
        _print_plan(plan, dry_run=False, out_err=True)
        try:
            _confirm("Prune these entries of the old jaxlib?", yes=yes, as_json=as_json)
        except Declined:
            return False
        return True

    interactive = yes or (not as_json and sys.stdin.isatty())
    result = hook(_with_remote(_settings(ctx), remote), warm=then_warm, keep_versions=keep_versions,
                  dry_run=dry_run, approve=approve if interactive else None)
    if dry_run and result.prune_plan is not None and not as_json:
        _print_plan(result.prune_plan, dry_run=True, out_err=True)
    for message in result.messages:
        click.echo(f"jaxcache hook: {message}", err=True)
    # The environment is printed whatever became of the prune: the job still gets its cache.
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else render(result.env, shell))
    if result.upgrade_prune == "refused":
        click.echo("jaxcache: error: refusing to delete without --yes (no terminal to ask on); "
                   "preview with --dry-run", err=True)
        return ConfirmationRequired.exit_code
    if result.upgrade_prune == "declined":
        click.echo("jaxcache: error: declined: nothing was changed", err=True)
        return Declined.exit_code
    return 0


@main.command("init")
@click.option("--shared", "group", metavar="GROUP",
              help="Make a team cache: owned by GROUP, setgid, group-writable, never world-writable.")
@click.pass_context
def init_command(ctx: click.Context, group: str | None) -> None:
    """Create the cache folder with safe permissions (private, or shared with a group).

    Example: jaxcache --cache-dir /shared/jax-cache init --shared physics
    """
    from jaxcache.security import init_private, init_shared, shared_info, writable_by_others

    settings = _settings(ctx)
    if group:
        init_shared(settings.root, group)
        click.echo(f"Shared cache for group {group} at {settings.root} (mode 2770). "
                   "Members should run with umask 0002 so the group can use what they write.", err=True)
    else:
        init_private(settings.root)
    for problem in writable_by_others(settings.root, shared=shared_info(settings.root)):
        click.echo(f"jaxcache: warning: {problem}", err=True)
    click.echo(settings.root)


# ---------------------------------------------------------------- fleet: push, pull, export, import

_FLEET_ROWS = 20
_fleet_dry_run = click.option("--dry-run", "-n", is_flag=True, help="Print the plan; transfer and write nothing.")


def _fleet_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every fleet command shares."""
    options = [
        click.option("--key-file", type=click.Path(dir_okay=False), metavar="FILE",
                     help="The fleet's signing key (else JAXCACHE_FLEET_KEY or JAXCACHE_FLEET_KEY_FILE)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress on stderr."),
        _fleet_dry_run,
        json_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


_jobs_option = click.option("--jobs", "-j", type=click.IntRange(min=1), default=16, show_default=True,
                            help="Objects in flight at once.")


def _transfer_progress(verb: str, *, quiet: bool, every: int = 100):
    """Progress on stderr: one line redrawn on a terminal, else a line per ``every`` objects and the last.

    It counts objects handled, failed ones too (the summary after it says which failed), hence "pulling", not "pulled".
    """
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def show(done: int, total: int, moved: int) -> None:
        text = f"{verb} {done}/{total} objects ({display.size(moved)})"
        if tty:
            click.echo(f"\r\033[K{text}", err=True, nl=done == total)
        elif done % every == 0 or done == total:
            click.echo(text, err=True)

    return show


def _fleet_failures(failed: Any, total: int, verb: str) -> int:
    """One line for objects that did not make it; the exit code (1 if any did not)."""
    if not failed:
        return 0
    name, reason = failed[0]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    click.echo(f"jaxcache: error: {len(failed)} of {total} objects not {verb}; first: {name}: {reason}{more}",
               err=True)
    return 1


def _fleet_rows(records: Any) -> list[tuple[Any, ...]]:
    return [(r.module, r.kind, r.name.rsplit("-", 2)[-2][:12] if r.kind == "entry" else r.key[:12],
             display.size(r.size)) for r in records[:_FLEET_ROWS]]


def _print_fleet_table(records: Any, *, err: bool = False) -> None:
    if records:
        click.echo(display.table(("NAME", "KIND", "HASH", "SIZE"), _fleet_rows(records), right=(3,)), err=err)
        if len(records) > _FLEET_ROWS:
            click.echo(f"... and {len(records) - _FLEET_ROWS} more", err=err)


def _reasons(skipped: Any) -> str:
    from collections import Counter

    counts = Counter(why for _, why in skipped)
    return "; ".join(f"{n} {why}" for why, n in counts.most_common(3))


_PROBLEMS = {"missing": "missing", "size": "cut short or grown", "content": "altered"}


def _print_damage(plan: Any, *, healing: str) -> None:
    """The damaged objects a push found on the remote: each with what is wrong and what the push does."""
    rows = [(_short_name(d.name), _PROBLEMS.get(d.problem, d.problem),
             healing if d.heal else "not healed", d.detail) for d in plan.damaged[:_FLEET_ROWS]]
    click.echo(display.table(("DAMAGED ON REMOTE", "PROBLEM", "ACTION", "DETAIL"), rows))
    if len(plan.damaged) > _FLEET_ROWS:
        click.echo(f"... and {len(plan.damaged) - _FLEET_ROWS} more")


def _short_name(name: str) -> str:
    """An object's name with its 64-hex hash cut to 12 (as the fleet table shows it)."""
    head, sep, tail = name.rpartition("-")
    if sep and tail == "cache":  # <module>-<hash>-cache
        module, _, key = head.rpartition("-")
        return f"{module}-{key[:12]}...-cache"
    return name[:len("executables/") + 12] + "..." if len(name) > 40 else name


def _checks(plan: Any) -> int:
    """How many objects --verify tried to read back (judged or not)."""
    return (plan.verified or 0) + len(plan.unchecked)


def _damage_counts(damaged: Any) -> str:
    from collections import Counter

    counts = Counter(_PROBLEMS.get(d.problem, d.problem) for d in damaged)
    return ", ".join(f"{n} {what}" for what, n in counts.most_common())


@main.command("push")
@click.argument("remote")
@click.option("--version", "version", metavar="V", help="The jaxlib version folder to push (default: the installed one).")
@click.option("--name", "pattern", metavar="GLOB", help="Only objects whose module name matches, e.g. 'jit_lsq_*'.")
@click.option("--verify", is_flag=True,
              help="Also download the remote copy of each of this folder's objects, check its SHA-256, "
                   "and send again those damaged (missing or resized ones are sent again without it).")
@_jobs_option
@_fleet_options
@click.pass_context
def push_command(ctx: click.Context, remote: str, version: str | None, pattern: str | None, verify: bool, jobs: int,
                 key_file: str | None, quiet: bool, dry_run: bool, as_json: bool) -> int:
    """Send what this cache has and REMOTE lacks: a path on a shared filesystem, s3://bucket/prefix or gs://...

    Objects go first, then one manifest naming them (signed with the fleet key
    when one is set); another pusher at the same time loses nothing. An object
    the remote names but lacks, or holds at another size, is sent again from
    here; --verify also reads back and hashes the others (an overwrite keeps the size).

    Example: jaxcache push s3://my-bucket/jax-cache --verify
    """
    from jaxcache.fleet import plan_push, policy_for, push

    settings = _settings(ctx)
    policy = policy_for(settings, key_file=key_file)
    plan = plan_push(settings, remote, version=version, name=pattern, policy=policy, jobs=jobs, verify=verify,
                     progress=_transfer_progress("reading back", quiet=quiet or as_json) if verify else None)
    for name, why in plan.refused:
        click.echo(f"jaxcache: warning: not sending {name}: {why}", err=True)
    for name, why in plan.catalog.ignored:
        click.echo(f"jaxcache: warning: not merging manifest {name}: {why}", err=True)
    if plan.unhealed:
        first = plan.unhealed[0]
        more = f" (and {len(plan.unhealed) - 1} more)" if len(plan.unhealed) > 1 else ""
        click.echo(f"jaxcache: warning: {display.count(len(plan.unhealed), 'object')} named on {plan.remote} "
                   f"{'is' if len(plan.unhealed) == 1 else 'are'} damaged and not in what this push sends, so not "
                   f"healed; first: {first.name}: {first.detail}{more}", err=True)
    checked = f" ({plan.verified} read back and hashed)" if plan.verified is not None else ""
    if dry_run or not plan.uploads and not plan.send and not plan.repair:
        if as_json:
            _emit_json({"dry_run": dry_run, **plan.as_dict()})
        else:
            _print_fleet_table(plan.uploads)
            if plan.damaged:
                _print_damage(plan, healing="would re-send" if dry_run else "re-send")
            heal = f" and heal {len(plan.repair)} damaged" if plan.repair else ""
            what = (f"Would send {display.count(len(plan.uploads), 'object')} ({display.size(plan.bytes)}) to "
                    f"{plan.remote}{heal};" if dry_run else "Nothing to send:")
            click.echo(f"{what} {plan.already} of this folder's objects are there already{checked}.")
        return _fleet_failures(plan.unchecked, _checks(plan), "verified")
    result = push(plan, key=policy.key, jobs=jobs, progress=_transfer_progress("pushing", quiet=quiet or as_json))
    if as_json:
        _emit_json({"dry_run": False, **result.as_dict()})
    else:
        if plan.damaged:
            _print_damage(plan, healing="re-sent")
        signed = " (signed)" if policy.key is not None and result.manifest else ""
        healed_names = set(result.healed)
        healed = (f"; healed {display.count(len(healed_names), 'damaged object')} "
                  f"({_damage_counts(d for d in plan.damaged if d.heal and d.name in healed_names)})"
                  if healed_names else "")
        click.echo(f"Pushed {display.count(len(result.transferred.done), 'object')} "
                   f"({display.size(result.transferred.bytes)} uploaded) to {plan.remote} in "
                   f"{result.transferred.seconds:.1f} s{healed}; "
                   f"{f'{plan.already} there already{checked}; ' if verify else ''}"
                   + (f"manifest {result.manifest}{signed}." if result.manifest
                      else "no new manifest (the remote's manifests already name these objects)."))
    return (_fleet_failures(result.transferred.failed, len(plan.uploads), "pushed")
            or _fleet_failures(plan.unchecked, _checks(plan), "verified"))


@main.command("pull")
@click.argument("remote")
@click.option("--strict", is_flag=True, help="Refuse manifests not signed with the fleet key (also: strict = true).")
@_jobs_option
@_fleet_options
@click.pass_context
def pull_command(ctx: click.Context, remote: str, strict: bool, jobs: int, key_file: str | None, quiet: bool,
                 dry_run: bool, as_json: bool) -> int:
    """Bring in what REMOTE has, this node can hit, and this cache lacks.

    Only this jaxlib's folder; only entries this platform, compression, CPU and
    folder path can hit. Each object is checked against the manifest's SHA-256
    and enters the cache whole, under JAX's lock. With nothing new: one small read.

    Example: jaxcache pull s3://my-bucket/jax-cache
    """
    from jaxcache.fleet import plan_pull, policy_for, pull

    settings = _settings(ctx)
    plan = plan_pull(settings, remote, policy=policy_for(settings, key_file=key_file, strict=strict), jobs=jobs)
    for name, why in plan.catalog.ignored:
        click.echo(f"jaxcache: warning: ignoring manifest {name}: {why}", err=True)
    if dry_run or not plan.fetch:
        if as_json:
            _emit_json({"dry_run": dry_run, **plan.as_dict()})
        else:
            _print_fleet_table(plan.fetch)
            if not plan.catalog.manifests:
                click.echo(f"Nothing to fetch: {plan.remote} holds no manifest for jaxlib {plan.node.jaxlib}.")
                return
            head = (f"Would fetch {display.count(len(plan.fetch), 'object')} ({display.size(plan.bytes)})"
                    if dry_run else "Nothing to fetch")
            skipped = f"; {len(plan.skipped)} can never hit here ({_reasons(plan.skipped)})" if plan.skipped else ""
            click.echo(f"{head} from {plan.remote}: {plan.here} already here{skipped}.")
        return
    result = pull(plan, settings, jobs=jobs, progress=_transfer_progress("pulling", quiet=quiet or as_json))
    if as_json:
        _emit_json({"dry_run": False, **result.as_dict()})
    else:
        skipped = f"; {len(plan.skipped)} can never hit here ({_reasons(plan.skipped)})" if plan.skipped else ""
        click.echo(f"Pulled {display.count(len(result.transferred.done), 'object')} "
                   f"({display.size(result.transferred.bytes)}) into {plan.folder} in "
                   f"{result.transferred.seconds:.1f} s{skipped}.")
    return _fleet_failures(result.transferred.failed, len(plan.fetch), "pulled")


@main.command("export")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The bundle to write (a tar archive).")
@click.option("--version", "version", metavar="V", help="The jaxlib version folder to export (default: the installed one).")
@click.option("--name", "pattern", metavar="GLOB", help="Only objects whose module name matches, e.g. 'jit_lsq_*'.")
@click.option("--key-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Sign with this fleet key (else JAXCACHE_FLEET_KEY or JAXCACHE_FLEET_KEY_FILE).")
@click.option("--yes", "-y", is_flag=True, help="Replace FILE if it exists, without asking.")
@json_option
@click.pass_context
def export_command(ctx: click.Context, output: Path, version: str | None, pattern: str | None, key_file: str | None,
                   yes: bool, as_json: bool) -> None:
    """Write one version folder's entries and stored executables, with their manifest, into one file.

    An existing FILE is replaced only after a yes on a terminal, or with --yes.

    Example: jaxcache export -o jax-cache.tar --name 'jit_lsq_*'
    """
    from jaxcache.fleet.bundle import export
    from jaxcache.fleet.trust import load_key

    if not output.absolute().parent.is_dir():
        raise CacheDirError(f"cannot write {output}: no folder {output.absolute().parent}")
    if output.exists() or output.is_symlink():
        _confirm(f"Replace {output}?", yes=yes, as_json=as_json, verb=f"replace {output}")
    result = export(_settings(ctx), output, version=version, name=pattern, key=load_key(key_file))
    for name, why in result.refused:
        click.echo(f"jaxcache: warning: not exported {name}: {why}", err=True)
    if as_json:
        _emit_json(result.as_dict())
    else:
        click.echo(f"Exported {display.count(result.objects, 'object')} ({display.size(result.bytes)}) of jaxlib "
                   f"{result.jaxlib} to {result.path}{' (signed)' if result.signed else ''}.")


@main.command("import")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Refuse a bundle not signed with the fleet key (also: strict = true).")
@click.option("--key-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="The fleet's key (else JAXCACHE_FLEET_KEY or JAXCACHE_FLEET_KEY_FILE).")
@_fleet_dry_run
@json_option
@click.pass_context
def import_command(ctx: click.Context, bundle: Path, strict: bool, key_file: str | None, dry_run: bool,
                   as_json: bool) -> None:
    """Check a bundle against this installation, say what will and will not hit, then import what will.

    A truncated or altered bundle is refused and nothing is imported.

    Example: jaxcache import jax-cache.tar --dry-run
    """
    from jaxcache.fleet import policy_for
    from jaxcache.fleet.bundle import import_bundle, plan_import

    settings = _settings(ctx)
    plan = plan_import(settings, bundle, policy=policy_for(settings, key_file=key_file, strict=strict))
    if not as_json:
        _print_fleet_table(plan.fetch)
        verb = "Would import" if dry_run else "Importing"
        what = (f"{verb} {display.count(len(plan.fetch), 'object')} ({display.size(plan.bytes)})" if plan.fetch
                else "Nothing to import")
        skipped = f"; {len(plan.skipped)} can never hit here ({_reasons(plan.skipped)})" if plan.skipped else ""
        click.echo(f"{what} of jaxlib {plan.manifest.jaxlib} into {plan.folder}: {plan.here} already here{skipped}"
                   f" (manifest {plan.status}).")
    if dry_run:
        if as_json:
            _emit_json({"dry_run": True, **plan.as_dict()})
        return
    done = import_bundle(plan, settings)
    if as_json:
        _emit_json({"dry_run": False, **plan.as_dict(), "transferred": done.as_dict()})
    elif plan.fetch:
        click.echo(f"Imported {display.count(len(done.done), 'object')}.")


def _with_remote(settings: Settings, remote: str | None) -> Settings:
    """The settings with ``hook --remote`` in place of the ``remote`` setting."""
    import dataclasses

    from jaxcache.settings import Setting

    if remote is None:
        return settings
    if not remote.strip():
        raise click.BadParameter("is empty", param_hint="'--remote'")
    return dataclasses.replace(settings, remote=Setting(remote, "--remote"))


def _push_after_run(ctx: click.Context, remote: str, exit_code: int) -> int:
    """``run --push``: push whatever the command left in the cache; the command's exit code wins,
    else 1 if the push failed. Messages on stderr (stdout's last line stays the run report)."""
    from jaxcache.fleet import plan_push, policy_for, push

    settings = _settings(ctx)
    policy = policy_for(settings)
    try:
        result = push(plan_push(settings, remote, policy=policy), key=policy.key)
    except JaxCacheError as e:
        click.echo(f"jaxcache: error: push to {remote} failed: {e}", err=True)
        return exit_code or e.exit_code
    click.echo(f"jaxcache run: pushed {display.count(len(result.plan.send), 'new object')} "
               f"({display.size(result.transferred.bytes)} uploaded) to {result.plan.remote}", err=True)
    if result.transferred.failed:
        name, reason = result.transferred.failed[0]
        click.echo(f"jaxcache: error: {len(result.transferred.failed)} objects not pushed; first: {name}: {reason}",
                   err=True)
        return exit_code or 1
    return exit_code

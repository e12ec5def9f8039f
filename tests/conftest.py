"""Shared fixtures: an isolated environment and a real cache built once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jaxcache_testing import _ISOLATED_VARS, run_compile


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No user config, no inherited cache settings, and a cwd without pyproject.toml."""
    home = tmp_path_factory.mktemp("home")
    for var in list(os.environ):
        if var.startswith(_ISOLATED_VARS):
            monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.chdir(home)
    return dict(os.environ)


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real cache root written once by real JAX through jaxcache.configure()."""
    root = tmp_path_factory.mktemp("built") / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_VARS)}
    env.update(JAXCACHE_DIR=str(root), JAX_PLATFORMS="cpu",
               XDG_CONFIG_HOME=str(tmp_path_factory.mktemp("cfg")))
    run_compile(env)
    return root


@pytest.fixture
def cache(built_cache: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`built_cache` that a test may change."""
    root = tmp_path / "cache"
    shutil.copytree(built_cache, root, symlinks=True)
    return root



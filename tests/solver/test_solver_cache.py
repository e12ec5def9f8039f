"""Kernels compiled ahead of time from solver.kernels serve a later solve from the
persistent cache, in a fresh process, with no misses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from solver_testing import run_python

_CONFIGURE = """
import json, logging, sys
import jax
jax.config.update("jax_compilation_cache_dir", {cache!r})
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

class Counter(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.hits, self.misses = [], []
    def emit(self, record):
        msg = str(record.msg)
        if msg.startswith("Persistent compilation cache hit"):
            self.hits.append(record.args[0])
        elif msg.startswith("PERSISTENT COMPILATION CACHE MISS"):
            self.misses.append(record.args[0])

counter = Counter()
log = logging.getLogger("jax._src.compiler")
log.addHandler(counter)
log.setLevel(logging.DEBUG)
import numpy as np
import solver
CASES = [("bratu", 4, "batched", "auto"), ("curvefit", 2, "blocked", "auto"), ("spectral", 10, "batched", 3)]
"""

_WARM = """
names = []
for name, size, mode, chunk in CASES:
    objective, x0 = solver.problems.get(name, size, deriv_mode=mode, jac_chunk_size=chunk)
    for kernel in solver.kernels(objective, jax.ShapeDtypeStruct(x0.shape, x0.dtype)):
        jax.jit(kernel.fn).lower(*kernel.args).compile()
        names.append(kernel.name)
print(json.dumps({{"kernels": names, "misses": counter.misses}}))
"""

_SOLVE = """
costs = []
for name, size, mode, chunk in CASES:
    objective, x0 = solver.problems.get(name, size, deriv_mode=mode, jac_chunk_size=chunk)
    costs.append(solver.least_squares(objective, x0).cost)
print(json.dumps({{"hits": counter.hits, "misses": counter.misses, "costs": costs}}))
"""


@pytest.mark.slow
def test_aot_kernels_make_a_fresh_solve_hit_every_kernel(tmp_path: Path) -> None:
    cache = str((tmp_path / "cache").resolve())
    warm = json.loads(run_python((_CONFIGURE + _WARM).format(cache=cache)).splitlines()[-1])
    assert {"residual", "jacobian", "iterate"} <= set(warm["kernels"])
    assert any(k.startswith("probe_jacobian") for k in warm["kernels"])
    assert warm["misses"], "the warm process should have compiled (missed) fresh kernels"
    entries = list((tmp_path / "cache").glob("*-cache"))
    assert entries

    solve = json.loads(run_python((_CONFIGURE + _SOLVE).format(cache=cache)).splitlines()[-1])
    assert solve["misses"] == [], solve
    assert {"jit_lsq_residual", "jit_lsq_jacobian", "jit_lsq_iterate"} <= set(solve["hits"])
    bratu, curvefit, spectral = solve["costs"]
    assert bratu < 1e-8 and spectral < 1e-8 and 0 < curvefit < 1  # float32 solves
    assert len(list((tmp_path / "cache").glob("*-cache"))) == len(entries)

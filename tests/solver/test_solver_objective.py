"""Objective validation, DESC's chunk-size placement rules, and "auto" sizing."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import solver
from solver import memory


def _square(x, params):
    return x**2


def _three(x, params):
    return x[:3]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "big", True])
def test_bad_chunk_sizes_raise(bad: object) -> None:
    with pytest.raises(ValueError, match="jac_chunk_size=.* must be a positive int"):
        solver.Objective(_square, 4, jac_chunk_size=bad)
    with pytest.raises(ValueError, match="jac_chunk_size=.* must be a positive int"):
        solver.ObjectiveFunction(solver.Objective(_square, 4), jac_chunk_size=bad)


def test_chunk_size_on_sub_objective_in_batched_mode_raises() -> None:
    obj = solver.Objective(_square, 4, jac_chunk_size=2, name="sq")
    with pytest.raises(ValueError, match=r"sub-objective\(s\) \['sq'\].*deriv_mode='blocked'"):
        solver.ObjectiveFunction(obj)
    solver.ObjectiveFunction(obj, deriv_mode="blocked")  # the right place


def test_chunk_size_on_objective_function_in_blocked_mode_raises() -> None:
    obj = solver.Objective(_square, 4)
    with pytest.raises(ValueError, match="jac_chunk_size=2 was passed to ObjectiveFunction"):
        solver.ObjectiveFunction(obj, deriv_mode="blocked", jac_chunk_size=2)
    solver.ObjectiveFunction(obj, deriv_mode="blocked", jac_chunk_size="auto")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"deriv_mode": "forward"}, "deriv_mode='forward'"),
        ({"memory_budget": 0}, "memory_budget=0"),
        ({"num_devices": 0}, "num_devices=0"),
    ],
)
def test_bad_objective_function_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        solver.ObjectiveFunction(solver.Objective(_square, 4), **kwargs)


def test_bad_objective_arguments() -> None:
    with pytest.raises(ValueError, match="dim_f=0"):
        solver.Objective(_square, 0)
    with pytest.raises(ValueError, match="must be callable"):
        solver.Objective("f", 3)
    with pytest.raises(ValueError, match=r"weight has shape \(2,\)"):
        solver.Objective(_square, 3, weight=np.ones(2))
    with pytest.raises(ValueError, match="non-empty"):
        solver.ObjectiveFunction([])
    with pytest.raises(ValueError, match="exceeds"):
        solver.ObjectiveFunction(solver.Objective(_square, 4), num_devices=64).build(np.ones(4))


def test_bad_shapes_raise() -> None:
    objective = solver.ObjectiveFunction(solver.Objective(_three, 4, name="three"))
    with pytest.raises(ValueError, match=r"'three' returned shape \(3,\), expected \(4,\)"):
        objective.build(np.ones(5))
    objective = solver.ObjectiveFunction(solver.Objective(_square, 4))
    with pytest.raises(ValueError, match="1-D"):
        objective.build(np.ones((2, 2)))
    with pytest.raises(solver.SolverError, match="not built"):
        objective._require_built()


def test_weights_and_params_are_data() -> None:
    obj = solver.Objective(lambda x, p: p["a"] * x, 3, params={"a": 2.0}, weight=np.array([1.0, 2.0, 3.0]))
    objective = solver.ObjectiveFunction(obj, jac_chunk_size=2)
    x = np.array([1.0, 1.0, 1.0])
    np.testing.assert_allclose(objective.compute(x), [2.0, 4.0, 6.0])
    np.testing.assert_allclose(objective.jac(x), np.diag([2.0, 4.0, 6.0]))
    params, weight = objective.data[0]
    assert not params["a"].weak_type and params["a"].dtype == jnp.float64
    assert weight.dtype == jnp.float64


def _compiler_peak(objective: solver.ObjectiveFunction, chunk: int) -> float:
    """What the model predicts, from the compiler itself: Jacobian, arguments and temp bytes."""
    from solver.kernels import probe_memory

    stats = probe_memory(objective, None, chunk)
    assert stats is not None
    itemsize = np.dtype(objective.dtype).itemsize
    return objective.dim_f * objective.dim_x * itemsize + stats["argument_size_in_bytes"] + stats["temp_size_in_bytes"]


def test_auto_uses_compiler_memory_model_and_budget() -> None:
    n = 64
    big, x0 = solver.problems.get("spectral", n, memory_budget=1 << 40)
    big.build(x0)
    (model,) = big.memory_models
    assert model.source == "compiler" and model.m1 > 0
    # The model is the compiler's own analysis: exact at every probe it compiled, and never
    # below it between them (XLA:CPU from jax 0.11.1 reports a flat temp size for small
    # chunks, earlier versions a line: the model covers both). Beyond the largest probe it
    # extrapolates (jax 0.6.1 grows faster past 40 columns here: the model is a model).
    for chunk in model.probes:
        assert model.predict(chunk) == pytest.approx(_compiler_peak(big, chunk), rel=1e-9), chunk
    for chunk in (c for c in (2, 4, 12, 24, 40) if c <= max(model.probes)):
        assert model.predict(chunk) >= _compiler_peak(big, chunk) * (1 - 1e-9), chunk
    assert big.jac_chunk_size == n
    budget = int(model.predict(10) + model.m1 / 2)
    small, _ = solver.problems.get("spectral", n, memory_budget=budget)
    small.build(x0)
    chunk = small.jac_chunk_size
    # The largest power of two that fits: 8 where the peak grows from the first column, 16
    # where a flat phase sets it up to 28 columns.
    assert chunk in (8, 16) and chunk & (chunk - 1) == 0
    assert small.memory_models[0].predict(chunk) <= budget < small.memory_models[0].predict(2 * chunk)


def test_auto_says_once_when_the_compiler_model_is_unusable(caplog: pytest.LogCaptureFixture) -> None:
    """A memory analysis that never grows with the chunk: the estimate, and one warning."""
    import logging

    from solver import memory

    objective, x0 = solver.problems.get("spectral", 64, memory_budget=1 << 40)
    objective.build(x0)
    flat = {"temp_size_in_bytes": 1000, "argument_size_in_bytes": 10}
    memory._SAID.clear()
    with caplog.at_level(logging.WARNING, logger="solver.memory"):
        models = [memory._fit(objective, None, lambda chunk: flat) for _ in range(2)]
    assert all(m.source == "estimate" for m in models)
    assert models[0].probes == (8, 16, 32)  # it looked as far as it could below 64 columns
    said = [r for r in caplog.records if "estimate" in r.getMessage()]
    assert len(said) == 1 and "does not grow" in said[0].getMessage()


def test_auto_in_blocked_mode_resolves_each_block() -> None:
    objective, x0 = solver.problems.get("curvefit", 3, deriv_mode="blocked")
    objective.build(x0)
    assert len(objective.jac_chunk_sizes) == 2 and len(objective.memory_models) == 2
    assert objective.jac_chunk_size is None  # only meaningful when batched


def test_choose_chunk_size_bounds() -> None:
    model = memory.MemoryModel(1000.0, 100.0, "compiler")
    assert memory.choose_chunk_size(model, 1500, 50) == 4  # 5, as a power of two
    assert memory.choose_chunk_size(model, 10, 50) == 1
    assert memory.choose_chunk_size(model, 10**9, 50) == 50
    assert memory.choose_chunk_size(model, 10**9, 50, num_devices=4) == 13
    assert memory.choose_chunk_size(model, 10**9, 50, working_set=1600) == 16
    assert memory.choose_chunk_size(model, 2800, 50) == 16


def test_choose_chunk_size_working_set_target() -> None:
    model = memory.MemoryModel(1000.0, 100.0, "compiler")
    # the power of two nearest to working_set / m1 in log scale (22 -> 16, 23 -> 32), within the budget
    assert memory.choose_chunk_size(model, 10**9, 256, working_set=2200) == 16
    assert memory.choose_chunk_size(model, 10**9, 256, working_set=2300) == 32
    assert memory.choose_chunk_size(model, 1000 + 100 * 20, 256, working_set=2300) == 16
    # all columns only when all of them fit the working set
    assert memory.choose_chunk_size(model, 10**9, 50, working_set=5000) == 50
    assert memory.choose_chunk_size(model, 10**9, 50, working_set=4900) == 32
    assert memory.choose_chunk_size(model, 10**9, 50, working_set=6400, whole_limit=4900) == 32


def test_cpu_l2_bytes(tmp_path: Path) -> None:
    assert memory.cpu_l2_bytes(tmp_path) == memory.DEFAULT_L2_BYTES
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("2", "Unified", "1024K")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    assert memory.cpu_l2_bytes(tmp_path) == 1 << 20
    assert memory.working_set_cap() == memory.CPU_CHUNK_L2_FACTOR * memory.cpu_l2_bytes()


def test_cgroup_limits(tmp_path: Path) -> None:
    assert memory.cgroup_memory_available(tmp_path) is None
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.cgroup_memory_available(tmp_path) is None
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("300\n")
    assert memory.cgroup_memory_available(tmp_path) == 700
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory.cgroup_memory_available(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("4096\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("96\n")
    assert memory.cgroup_memory_available(v1) == 4000


def test_memory_budget() -> None:
    assert memory.memory_budget(12345) == 12345
    free = memory.available_memory()
    assert free is not None and free > 0
    assert 0 < memory.memory_budget() <= free
    with pytest.raises(ValueError, match="explicit=-5"):
        memory.memory_budget(-5)

"""The chunked Jacobian equals jax.jacfwd for every problem, mode and chunk size."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solver
from solver.jacobian import JacobianPlan, lsq_residual
from solver.kernels import lsq_jacobian_jit

from solver_testing import run_python

# problem -> (size, a chunk size that does not divide dim_x)
SIZES = {"rosenbrock": (10, 3), "bratu": (4, 5), "spectral": (12, 5), "curvefit": (3, 4)}


def _reference(objective: solver.ObjectiveFunction, x: np.ndarray) -> np.ndarray:
    fun = lambda y: lsq_residual(y, objective.data, spec=objective.spec)  # noqa: E731
    return np.asarray(jax.jacfwd(fun)(jnp.asarray(x)))


def _point(x0: np.ndarray) -> np.ndarray:
    return x0 + 0.1 * np.sin(np.arange(x0.size) + 1.0)


@pytest.mark.parametrize("mode", ["batched", "blocked"])
@pytest.mark.parametrize("chunk", ["one", "non_divisor", "dim_x", "auto"])
@pytest.mark.parametrize("name", sorted(SIZES))
def test_jacobian_matches_jacfwd(name: str, chunk: str, mode: str) -> None:
    size, non_divisor = SIZES[name]
    probe, x0 = solver.problems.get(name, size)
    dim_x = x0.size
    assert dim_x % non_divisor != 0
    value = {"one": 1, "non_divisor": non_divisor, "dim_x": dim_x, "auto": "auto"}[chunk]
    objective, _ = solver.problems.get(name, size, deriv_mode=mode, jac_chunk_size=value)
    x = _point(x0)
    J = np.asarray(objective.jac(x))
    assert objective.dtype == np.float64
    expected = _reference(objective, x)
    assert J.shape == (objective.dim_f, dim_x)
    np.testing.assert_allclose(J, expected, rtol=0, atol=1e-13 * max(1.0, np.abs(expected).max()))
    blocks = len(objective.objectives) if mode == "blocked" else 1
    assert len(objective.jac_chunk_sizes) == blocks
    if value != "auto":
        assert objective.jac_chunk_sizes == (value,) * blocks
    else:
        assert all(1 <= c <= dim_x for c in objective.jac_chunk_sizes)


def test_batched_equals_blocked_with_different_block_chunks() -> None:
    objectives, x0 = solver.problems.curvefit.make(4)
    fit, reg = objectives
    batched = solver.ObjectiveFunction([fit, reg], jac_chunk_size=3)
    blocked = solver.ObjectiveFunction(
        [fit.replace(jac_chunk_size=5), reg.replace(jac_chunk_size=2)], deriv_mode="blocked"
    )
    x = _point(x0)
    np.testing.assert_allclose(np.asarray(blocked.jac(x)), np.asarray(batched.jac(x)), rtol=0, atol=1e-14)
    assert blocked.jac_chunk_sizes == (5, 2)
    assert batched.jac_chunk_size == 3


@pytest.mark.parametrize("chunk", [4, 5, 12])
def test_one_loop_body_and_no_identity(chunk: int) -> None:
    """A non-dividing chunk compiles one rolled loop; no (n, n) identity when chunked."""
    objectives, x0 = solver.problems.curvefit.make(6)  # n = 12, m = 480 + 12
    objective = solver.ObjectiveFunction(objectives[0], jac_chunk_size=chunk).build(x0)
    x = jax.ShapeDtypeStruct(x0.shape, np.float64)
    text = lsq_jacobian_jit.lower(x, objective.data, spec=objective.spec, plan=objective.plan).as_text()
    loops = text.count("stablehlo.while")
    assert loops == (0 if chunk == 12 else 1)
    if chunk < 12:  # one chunk of all columns is, unavoidably, the identity
        assert "tensor<12x12xf64>" not in text
    J = np.asarray(objective.jac(_point(x0)))
    np.testing.assert_allclose(J, _reference(objective, _point(x0)), rtol=0, atol=1e-13)


def test_plan_validation() -> None:
    objective, x0 = solver.problems.get("curvefit", 2)
    objective.build(x0)
    bad = JacobianPlan(chunks=(1,), blocked=True)
    with pytest.raises(ValueError, match="chunk sizes for 2 block"):
        lsq_jacobian_jit(x0, objective.data, spec=objective.spec, plan=bad)


@pytest.mark.slow
def test_sharded_over_two_host_devices_matches() -> None:
    code = """
import json, jax, numpy as np, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import solver
from solver.jacobian import lsq_residual
assert len(jax.devices()) == 2
out = {}
for name, size, mode, chunk in [("bratu", 4, "batched", 3), ("spectral", 9, "batched", "auto"),
                                ("curvefit", 3, "blocked", 2), ("rosenbrock", 6, "batched", None)]:
    obj, x0 = solver.problems.get(name, size, deriv_mode=mode, jac_chunk_size=chunk)
    x = x0 + 0.1 * np.sin(np.arange(x0.size) + 1.0)
    J = np.asarray(obj.jac(x))
    ref = np.asarray(jax.jacfwd(lambda y: lsq_residual(y, obj.data, spec=obj.spec))(jnp.asarray(x)))
    out[name] = {"err": float(np.abs(J - ref).max()), "scale": float(np.abs(ref).max()),
                 "devices": obj.plan.num_devices}
obj, x0 = solver.problems.get("bratu", 4)
res = solver.least_squares(obj, x0)
out["solve"] = {"cost": res.cost, "devices": obj.plan.num_devices}
# A sharded Jacobian, gathered for the iterate kernel, gives the same iterates as one device.
for name, size in [("rosenbrock", 6), ("curvefit", 3)]:
    runs = []
    for devices in (1, 2):
        obj, x0 = solver.problems.get(name, size, num_devices=devices)
        r = solver.least_squares(obj, x0, x_scale="jac")
        runs.append({"cost": r.cost, "nfev": r.nfev, "njev": r.njev, "status": r.status, "x": r.x.tolist()})
    out["paths_" + name] = runs
print(json.dumps(out))
"""
    out = json.loads(run_python(code, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}).splitlines()[-1])
    for name in ("bratu", "spectral", "curvefit", "rosenbrock"):
        assert out[name]["devices"] == 2
        assert out[name]["err"] <= 1e-13 * max(1.0, out[name]["scale"]), out
    assert out["solve"]["devices"] == 2
    assert out["solve"]["cost"] < 1e-20
    for name in ("rosenbrock", "curvefit"):
        fused, split = out["paths_" + name]
        assert (fused["nfev"], fused["njev"], fused["status"]) == (split["nfev"], split["njev"], split["status"])
        assert fused["cost"] == pytest.approx(split["cost"], rel=1e-9, abs=1e-20)
        np.testing.assert_allclose(fused["x"], split["x"], rtol=1e-7, atol=1e-10)

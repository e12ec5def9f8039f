"""A chunked-Jacobian nonlinear least-squares solver in JAX."""

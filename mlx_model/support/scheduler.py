"""Flow-matching samplers as plain arithmetic on arrays (numpy or MLX alike).

``FlowDPMSolver`` is diffusers' ``DPMSolverMultistepScheduler`` in the configuration SANA
ships (docs/model-facts.md section 3): DPM-Solver++ order 2 (midpoint), flow sigmas shifted by
``flow_shift``, ``prediction_type="flow_prediction"`` (x0 = x - sigma * v), final sigma 0,
lower-order final step.  ``FlowEuler`` is diffusers' ``FlowMatchEulerDiscreteScheduler``
(x += (sigma_next - sigma) * v).  Schedules and per-step coefficients are computed up front
in numpy; ``step`` only uses + - * / on the arrays it is given, so the same loop drives MLX,
numpy golden vectors or any other array type.
"""

from __future__ import annotations

import math

import numpy as np

from weights.core.configs import SchedulerConfig
from weights.core.errors import ConfigError


def flow_sigmas(cfg: SchedulerConfig, num_steps: int) -> np.ndarray:
    """DPMSolverMultistepScheduler.set_timesteps with use_flow_sigmas: ``num_steps`` sigmas."""
    alphas = np.linspace(1, 1 / cfg.num_train_timesteps, num_steps + 1)
    s = 1.0 - alphas
    return np.flip(cfg.flow_shift * s / (1 + (cfg.flow_shift - 1) * s))[:-1].copy()


def _check_steps(num_steps: int):
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ConfigError(f"the number of steps must be a positive integer, got {num_steps!r}.",
                          fix="pass --steps 1 or more (default 20).")


class FlowDPMSolver:
    """DPM-Solver++ (order <= 2) on flow sigmas; ``step`` must be called for i = 0, 1, ... in order."""

    def __init__(self, cfg: SchedulerConfig, num_steps: int):
        _check_steps(num_steps)
        unsupported = {
            "algorithm_type": (cfg.algorithm_type, ("dpmsolver++",)),
            "solver_type": (cfg.solver_type, ("midpoint", "heun")),
            "prediction_type": (cfg.prediction_type, ("flow_prediction",)),
            "use_flow_sigmas": (cfg.use_flow_sigmas, (True,)),
            "final_sigmas_type": (getattr(cfg, "final_sigmas_type", "zero"), ("zero",)),
            "thresholding": (cfg.thresholding, (False,)),
            "use_dynamic_shifting": (cfg.use_dynamic_shifting, (False,)),
            # diffusers picks these sigma schedules before the flow branch
            **{flag: (getattr(cfg, flag), (False,)) for flag in
               ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")},
        }
        for name, (value, ok) in unsupported.items():
            if value not in ok:
                raise ConfigError(f"scheduler {name}={value!r} is not supported (supported: {list(ok)}).",
                                  fix="use the SANA scheduler config (DPM-Solver++ with flow sigmas).")
        if cfg.solver_order not in (1, 2):
            raise ConfigError(f"scheduler solver_order={cfg.solver_order} is not supported.",
                              fix="use solver_order 1 or 2.")
        self.cfg = cfg
        self.num_steps = int(num_steps)
        sig = flow_sigmas(cfg, num_steps)
        self.timesteps = (sig * cfg.num_train_timesteps).astype(np.int64)  # as torch's int64 cast
        self.sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        self._coeffs = [self._coefficients(i) for i in range(self.num_steps)]
        self._prev_x0 = None

    def _order(self, i: int) -> int:
        n, c = self.num_steps, self.cfg
        last = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15)
                               or c.final_sigmas_type == "zero")
        return 1 if c.solver_order == 1 or i == 0 or last else 2

    def _coefficients(self, i: int) -> tuple:
        """(order, sigma_s0, a, b, c) with prev = a * sample + b * D0 + c * D1 (float64)."""
        s = [float(x) for x in self.sigmas]  # python floats: arrays of any library stay theirs
        s0, t = s[i], s[i + 1]
        lam = lambda sig: math.log(1 - sig) - math.log(sig) if sig > 0 else math.inf  # noqa: E731
        h = lam(t) - lam(s0)
        alpha_t = 1.0 - t
        em1 = math.exp(-h) - 1.0  # -1 when sigma_next = 0
        a = t / s0
        order = self._order(i)
        if order == 1:
            return order, float(s0), float(a), float(-alpha_t * em1), 0.0, 1.0
        r0 = (lam(s0) - lam(s[i - 1])) / h
        if self.cfg.solver_type == "midpoint":
            c = -0.5 * alpha_t * em1
        else:  # heun
            c = alpha_t * (em1 / h + 1.0)
        return order, float(s0), float(a), float(-alpha_t * em1), float(c), float(1.0 / r0)

    def step(self, model_output, sample, i: int):
        """One update from step ``i``'s velocity; returns the sample at sigma[i + 1]."""
        order, sigma, a, b, c, inv_r0 = self._coeffs[i]
        x0 = sample - sigma * model_output
        if order == 1:
            prev = a * sample + b * x0
        else:
            d1 = inv_r0 * (x0 - self._prev_x0)
            prev = a * sample + b * x0 + c * d1
        self._prev_x0 = x0
        return prev


class FlowEuler:
    """Flow-matching Euler, as diffusers' FlowMatchEulerDiscreteScheduler(shift=``shift``)."""

    def __init__(self, cfg: SchedulerConfig, num_steps: int, shift: float | None = None):
        _check_steps(num_steps)
        self.cfg = cfg
        self.num_steps = int(num_steps)
        n_train = cfg.num_train_timesteps
        shift = cfg.flow_shift if shift is None else shift
        shifted = lambda s: shift * s / (1 + (shift - 1) * s)  # noqa: E731
        train = shifted(np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy() / n_train)
        ts = np.linspace(float(train[0]) * n_train, float(train[-1]) * n_train, num_steps)
        sig = shifted(ts / n_train)
        sig32 = sig.astype(np.float32)
        self.timesteps = sig32 * np.float32(n_train)
        self.sigmas = np.concatenate([sig32, [0.0]]).astype(np.float32)
        self._dt = [float(self.sigmas[i + 1]) - float(self.sigmas[i]) for i in range(self.num_steps)]

    def step(self, model_output, sample, i: int):
        return sample + self._dt[i] * model_output


# The implementations, keyed by the sampler table's names (weights.core.samplers.SAMPLER_TABLE:
# every other fact about a sampler lives there); tests/test_samplers.py keeps the two in step.
SCHEDULERS = {"dpm": FlowDPMSolver, "euler": FlowEuler}


def classifier_free_guidance(uncond, cond, scale):
    """u + g * (c - u)"""
    return uncond + scale * (cond - uncond)

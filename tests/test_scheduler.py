"""Flow DPM-Solver++ and flow Euler vs diffusers, on the SANA scheduler config."""

import numpy as np
import pytest

import torch

from weights.core.configs import SchedulerConfig  # noqa: E402
from mlx_model.support.scheduler import FlowDPMSolver, FlowEuler, classifier_free_guidance  # noqa: E402
from metrics import within

pytestmark = pytest.mark.torch


def diffusers_dpm(steps):
    from weights.references import upstream

    s = upstream.scheduler(SchedulerConfig())
    s.set_timesteps(steps)
    return s


def fixed_denoiser(x, t):
    """A deterministic, non-linear stand-in for the DiT (same on numpy and torch)."""
    lib = torch if isinstance(x, torch.Tensor) else np
    return lib.tanh(x * 0.7 + float(t) / 1000.0) - 0.3 * x


@pytest.mark.parametrize("steps", range(1, 51))
def test_dpm_schedule_equals_diffusers(steps):
    ref = diffusers_dpm(steps)
    ours = FlowDPMSolver(SchedulerConfig(), steps)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.timesteps.dtype == np.int64
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    assert ours.sigmas[-1] == 0 and len(ours.sigmas) == steps + 1


def test_facts_20_step_values():
    s = FlowDPMSolver(SchedulerConfig(), 20)
    assert s.timesteps.tolist() == [999, 982, 963, 944, 922, 899, 874, 847, 817, 785, 749, 710,
                                    666, 617, 562, 499, 428, 345, 249, 136]
    np.testing.assert_allclose(s.sigmas[[0, 1, -3, -2, -1]], [0.99967, 0.98242, 0.24979, 0.13624, 0.0], atol=1e-5)


def _trajectories(ours, ref, steps, shape=(2, 8, 4, 4), seed=0):
    x0 = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    a, b = x0.copy(), torch.from_numpy(x0.copy())
    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        assert float(ours.timesteps[i]) == pytest.approx(float(t))
        a = ours.step(fixed_denoiser(a, ours.timesteps[i]), a, i).astype(np.float32)
        b = ref.step(fixed_denoiser(b, t), t, b).prev_sample
        worst = max(worst, float(np.abs(a - b.numpy()).max()))
    return worst


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 14, 15, 20, 50])
def test_dpm_trajectory_equals_diffusers(steps, parity):
    worst = _trajectories(FlowDPMSolver(SchedulerConfig(), steps), diffusers_dpm(steps), steps)
    if steps == 20:
        parity("scheduler dpm", "numpy", "max_abs_err", worst, at_most=1e-5)


def test_dpm_step_works_on_mlx():
    import mlx.core as mx
    s_np, s_mx = FlowDPMSolver(SchedulerConfig(), 20), FlowDPMSolver(SchedulerConfig(), 20)
    x = np.random.default_rng(1).standard_normal((1, 8, 4, 4)).astype(np.float32)
    a, b = x, mx.array(x)
    for i in range(20):
        a = s_np.step(np.tanh(a), a, i)
        b = s_mx.step(mx.tanh(b), b, i)
        assert isinstance(b, mx.array) and b.dtype == mx.float32
    np.testing.assert_allclose(np.array(b), a, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_euler_equals_diffusers(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = SchedulerConfig()
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.flow_shift)
    ref.set_timesteps(steps)
    ours = FlowEuler(cfg, steps)
    np.testing.assert_allclose(ours.timesteps, ref.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    within(_trajectories(ours, ref, steps), at_most=1e-5)
    import mlx.core as mx

    x = mx_array = mx.ones((1, 2))
    assert type(ours.step(x, x, 0)) is type(mx_array)


def test_cfg_formula():
    """noise = u + g (c - u) with the unconditional prediction first (docs/model-facts.md section 7)."""
    u, c = np.array([1.0, 2.0]), np.array([3.0, 0.0])
    np.testing.assert_allclose(classifier_free_guidance(u, c, 1.5), [4.0, -1.0])
    np.testing.assert_allclose(classifier_free_guidance(u, c, 1.0), c)


def test_bad_steps_is_clear():
    from weights.core.errors import MobileOError

    with pytest.raises(MobileOError, match="steps"):
        FlowDPMSolver(SchedulerConfig(), 0)


@pytest.mark.parametrize("flag", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                                  "use_lu_lambdas", "thresholding"])
def test_sigma_schedules_diffusers_prefers_are_refused(flag):
    """diffusers takes these schedules before the flow branch: running flow sigmas instead
    would silently differ, so such a config is a one-line error."""
    from weights.core.errors import ConfigError

    with pytest.raises(ConfigError, match=flag):
        FlowDPMSolver(SchedulerConfig().replace(**{flag: True}), 20)

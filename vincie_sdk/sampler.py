"""Flow-matching schedule, timesteps and Euler step (weightless; shared by training and sampling).

The official diffusion is a "lerp" schedule on a continuous clock ``t in [0, T]`` (T = 1000):
``x_t = (1 - t/T) * x0 + (t/T) * noise``; the network predicts ``v = noise - x0``. Sampling walks
uniform-trailing timesteps warped by ``shift`` and ends with a jump to ``x0``.

diffusers' ``FlowMatchEulerDiscreteScheduler`` reproduces this only when handed explicit sigmas and
then differs in the last ulps; the official arithmetic is six lines, so it is written out here to
stay bit-faithful (see the spec, section 5).

Example:
    >>> from vincie_sdk.config import SamplerConfig
    >>> s = FlowMatchSampler(SamplerConfig(steps=50, shift=12.0))
    >>> [round(float(t), 3) for t in s.timesteps()[:2]]
    [1000.0, 998.302]
"""

from __future__ import annotations

import torch

from .config import SamplerConfig


# The assumed standard deviation of x0 - source (latent units) for ``source_preconditioned`` outputs: local
# edits change a few percent of the pixels by up to 2, backgrounds every pixel by about 1.
RESIDUAL_STD = 0.5
# ``source_gated``: a zero output leaves the gate at sigmoid(-2) = 0.12, almost a plain source residual.
GATE_BIAS = -2.0


class FlowMatchSampler:
    """Weightless helper: timesteps, noising, targets, Euler steps and classifier-free guidance."""

    def __init__(self, config: SamplerConfig) -> None:
        self.config = config
        self.T = float(config.num_train_timesteps)

    # -- schedule --------------------------------------------------------------------------------
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A(t) = 1 - t/T (data weight), B(t) = t/T (noise weight)."""
        b = t / self.T
        return 1 - b, b

    def timesteps(self, steps: int | None = None, shift: float | None = None) -> torch.Tensor:
        """(steps,) float32 sampling timesteps, from T down to T/steps warped by ``shift``."""
        steps = steps or self.config.steps
        shift = self.config.shift if shift is None else shift
        u = torch.arange(1.0, 0.0, -1.0 / steps)[:steps]  # float32, as the official code
        return self.T * (shift * u / (1 + (shift - 1) * u))

    # -- training --------------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for per-sample (or per-token) t broadcast over trailing dims."""
        a, b = self.alpha_sigma(self._broadcast(t, x0))
        return a * x0 + b * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def velocity(self, output: torch.Tensor, x_t: torch.Tensor, source: torch.Tensor | None, t: torch.Tensor,
                 prediction: str = "velocity", min_sigma: float = 0.0) -> torch.Tensor:
        """The velocity a network output stands for (see ``DiTConfig.prediction``).

        Residual kinds give an ``x0`` (:meth:`x0_of`), and v = (x_t - x0) / B(t) since A + B = 1.
        ``min_sigma`` clamps B(t) from below; training uses it (with the same clamp on the target, see
        :meth:`x0_velocity`) so that nearly clean samples do not dominate the loss; sampling never needs it
        (B(t) >= T/steps).
        """
        if prediction == "velocity":
            return output
        return self.x0_velocity(self.x0_of(output, x_t, source, t, prediction), x_t, t, min_sigma)

    def x0_velocity(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, min_sigma: float = 0.0) -> torch.Tensor:
        """v = (x_t - x0) / B(t), B clamped at ``min_sigma``: the velocity of a known (or predicted) x0."""
        _, b = self.alpha_sigma(self._broadcast(t, x_t))
        return (x_t - x0) / b.clamp_min(min_sigma)

    def x0_of(self, output: torch.Tensor, x_t: torch.Tensor, source: torch.Tensor | None, t: torch.Tensor,
              prediction: str) -> torch.Tensor:
        """The x0 a residual output stands for.

        ``source_residual``: x0 = source + output.
        ``source_preconditioned``: with d = x0 - source of standard deviation s (``RESIDUAL_STD``), x_t -
        A source = A d + B noise, whose best linear estimate of d has the gain c_skip = A s^2 / (A^2 s^2 + B^2)
        and leaves an error of standard deviation c_out = s B / sqrt(A^2 s^2 + B^2); so x0 = source +
        c_skip (x_t - A source) + c_out output, and the network's target has unit scale at every t. At
        t = T this is "source + s output", near t = 0 it is "x_t / A" (EDM, Karras et al. 2022, with the
        source as the prior mean instead of 0).
        ``source_gated``: output = (r | g), x0 = source + sigmoid(g + GATE_BIAS) c_skip (x_t - A source) + r:
        ``source_residual`` when the gate is shut, the x_t term where the model opens it (changed pixels at
        low noise, which a plain residual model must copy from its input through every layer).
        """
        if source is None:
            raise ValueError(f"prediction={prediction!r} needs the source latent of the frame")
        if prediction == "source_residual":
            return source + output
        if prediction not in ("source_preconditioned", "source_gated"):
            raise ValueError(f"x0_of: prediction={prediction!r} is not a residual kind")
        a, b = self.alpha_sigma(self._broadcast(t, x_t))
        s2 = RESIDUAL_STD ** 2
        denom = a * a * s2 + b * b
        skip = a * s2 / denom * (x_t - a * source)
        if prediction == "source_gated":
            residual, gate = output.chunk(2, dim=-1)
            return source + torch.sigmoid(gate + GATE_BIAS) * skip + residual
        return source + skip + RESIDUAL_STD * b / denom.sqrt() * output

    @staticmethod
    def _broadcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape + (1,) * (like.ndim - t.ndim)) if t.ndim else t

    def sample_training_timesteps(self, n: int, generator: torch.Generator | None = None,
                                  loc: float = 0.0, scale: float = 1.0, device=None, shift: float = 1.0,
                                  uniform: float = 0.0, top: float = 0.0, top_span: float = 0.05) -> torch.Tensor:
        """Logit-normal t = T * sigmoid(N(loc, scale)) (the paper's and the official training setting),
        optionally warped by the same ``shift`` as the sampling timesteps (more training at high noise,
        where a sampler with shift > 1 spends most of its steps).

        ``uniform``: the share of timesteps drawn uniformly from [0, T] instead. The logit-normal almost
        never draws t > 0.98 T, yet sampling starts at exactly T; a small model does not extrapolate
        there (it then ignores its context), so it needs some training at the ends.

        ``top``: the share drawn uniformly from the last ``top_span`` of the range, [(1 - top_span) T, T],
        unwarped. A model trained without it copied its source well at 0.95 T but not at T (where x_t holds
        no trace of the frame and only the context can tell), and its first sampling steps went astray.
        """
        z = torch.randn(n, generator=generator, device=device) * scale + loc
        u = torch.sigmoid(z)
        if uniform > 0:
            flat = torch.rand(n, generator=generator, device=device)
            pick = torch.rand(n, generator=generator, device=device) < uniform
            u = torch.where(pick, flat, u)
        t = self.T * (shift * u / (1 + (shift - 1) * u))
        if top > 0:
            high = self.T * (1 - top_span * torch.rand(n, generator=generator, device=device))
            t = torch.where(torch.rand(n, generator=generator, device=device) < top, high, t)
        return t

    # -- sampling --------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """One Euler step from t to s; ``s=None`` (after the last timestep) jumps to the x0 estimate."""
        a_t, b_t = self.alpha_sigma(t)
        x0 = (x - b_t * v) / (a_t + b_t)
        if s is None or s < 0:
            return x0
        xT = (x + a_t * v) / (a_t + b_t)
        if s > self.T:
            return xT
        a_s, b_s = self.alpha_sigma(s)
        return a_s * x0 + b_s * xT

    def guidance_scale(self, index: int, steps: int) -> float:
        """CFG scale at step ``index``: guided for the first ``cfg_partial`` fraction of the steps."""
        return self.config.cfg_scale if (index + 1) / steps <= self.config.cfg_partial else 1.0

    def guide(self, v_pos: torch.Tensor, v_neg: torch.Tensor, scale: float) -> torch.Tensor:
        """v = v_neg + scale * (v_pos - v_neg), optionally rescaled towards the std of v_pos."""
        v = v_neg + scale * (v_pos - v_neg)
        r = self.config.cfg_rescale
        if r:
            dims = tuple(range(1, v.ndim))
            v = v * (r * v_pos.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True) + (1 - r))
        return v

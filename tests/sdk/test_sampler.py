"""The flow-matching schedule, Euler step and guidance arithmetic."""

from __future__ import annotations

import pytest
import torch

from vincie_sdk.config import SamplerConfig
from vincie_sdk.sampler import FlowMatchSampler


def test_timesteps_match_the_spec():
    t = FlowMatchSampler(SamplerConfig()).timesteps()
    assert t.shape == (50,) and t.dtype == torch.float32
    assert torch.allclose(t[:3], torch.tensor([1000.0, 998.302, 996.540]), atol=1e-3)
    assert torch.allclose(t[-3:], torch.tensor([433.735, 333.333, 196.721]), atol=1e-3)


def test_euler_step_and_final_jump():
    s = FlowMatchSampler(SamplerConfig())
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    t, u = torch.tensor(800.0), torch.tensor(600.0)
    xt = s.add_noise(x0, noise, t[None].expand(4))
    v = s.velocity_target(x0, noise)
    # With the exact velocity, one step lands exactly on the straight path at s, and the end jump on x0.
    assert torch.allclose(s.step(xt, v, t, u), s.add_noise(x0, noise, u[None].expand(4)), atol=1e-5)
    assert torch.allclose(s.step(xt, v, t, None), x0, atol=1e-5)
    # The x0/xT form equals x + (s - t)/T * v.
    assert torch.allclose(s.step(xt, v, t, u), xt + (u - t) / 1000 * v, atol=1e-5)


def test_guidance_and_rescale():
    v_pos, v_neg = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    plain = FlowMatchSampler(SamplerConfig(cfg_scale=3.0))
    assert torch.allclose(plain.guide(v_pos, v_neg, 3.0), v_neg + 3 * (v_pos - v_neg))
    resc = FlowMatchSampler(SamplerConfig(cfg_rescale=1.0))
    g = resc.guide(v_pos, v_neg, 5.0)
    assert torch.allclose(g.std(dim=(1, 2)), v_pos.std(dim=(1, 2)), atol=1e-5)
    partial = FlowMatchSampler(SamplerConfig(cfg_scale=4.0, cfg_partial=0.5))
    assert [partial.guidance_scale(i, 4) for i in range(4)] == [4.0, 4.0, 1.0, 1.0]


def test_logit_normal_training_timesteps():
    t = FlowMatchSampler(SamplerConfig()).sample_training_timesteps(20000, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1000
    assert abs(float(t.median()) - 500) < 15  # sigmoid(N(0,1)) is symmetric around 0.5


def test_shifted_training_timesteps_favour_high_noise():
    s = FlowMatchSampler(SamplerConfig())
    plain = s.sample_training_timesteps(20000, torch.Generator().manual_seed(0))
    shifted = s.sample_training_timesteps(20000, torch.Generator().manual_seed(0), shift=3.0)
    assert abs(float(shifted.median()) - 750) < 15  # 3u / (1 + 2u) at u = 0.5
    assert (shifted >= plain).all()


def test_source_residual_output_is_the_exact_velocity():
    s = FlowMatchSampler(SamplerConfig())
    x0, noise, source = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([900.0, 500.0, 120.0, 20.0])
    xt = s.add_noise(x0, noise, t)
    v = s.velocity(x0 - source, xt, source, t, "source_residual")
    assert torch.allclose(v, s.velocity_target(x0, noise), atol=1e-3)
    # The training clamp divides by max(B, min_sigma) on both sides: the same x0 error, bounded weight.
    clamped = s.velocity(x0 - source + 1.0, xt, source, t, "source_residual", min_sigma=0.25)
    exact = s.velocity(x0 - source, xt, source, t, "source_residual", min_sigma=0.25)
    assert torch.allclose((exact - clamped).abs()[:, 0], 1 / torch.tensor([0.9, 0.5, 0.25, 0.25]), atol=1e-4)
    assert torch.equal(s.velocity(x0, xt, None, t, "velocity"), x0)


def test_source_preconditioned_defaults_to_the_source_at_T_and_to_x_t_near_0():
    s = FlowMatchSampler(SamplerConfig())
    x0, noise, source = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    t = torch.tensor([1000.0, 500.0, 1.0])
    xt = s.add_noise(x0, noise, t)
    zero = s.x0_of(torch.zeros_like(xt), xt, source, t, "source_preconditioned")
    assert torch.allclose(zero[0], source[0])  # pure noise: copy the source
    assert torch.allclose(zero[2], x0[2], atol=5e-3)  # almost clean: read x_t
    assert not torch.allclose(zero[1], source[1], atol=0.1) and not torch.allclose(zero[1], x0[1], atol=0.1)
    # The unit-scale target that reproduces x0 exactly, and its velocity is the flow-matching target.
    a, b = s.alpha_sigma(t[:, None])
    var = a * a * 0.25 + b * b
    target = (x0 - source - a * 0.25 / var * (xt - a * source)) / (0.5 * b / var.sqrt())
    assert torch.allclose(s.x0_of(target, xt, source, t, "source_preconditioned"), x0, atol=1e-4)
    v = s.velocity(target, xt, source, t, "source_preconditioned")
    assert torch.allclose(v, s.velocity_target(x0, noise), atol=1e-2)
    assert torch.allclose(s.x0_velocity(x0, xt, t), s.velocity_target(x0, noise), atol=1e-2)
    with pytest.raises(ValueError, match="source latent"):
        s.velocity(target, xt, None, t, "source_preconditioned")


def test_source_gated_is_a_residual_when_shut_and_reads_x_t_when_open():
    s = FlowMatchSampler(SamplerConfig())
    x0, noise, source = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6)
    t = torch.tensor([1.0, 400.0])
    xt = s.add_noise(x0, noise, t)
    r = torch.randn(2, 6)
    shut = s.x0_of(torch.cat((r, torch.full_like(r, -50.0)), -1), xt, source, t, "source_gated")
    assert torch.allclose(shut, source + r)
    open_ = s.x0_of(torch.cat((torch.zeros_like(r), torch.full_like(r, 50.0)), -1), xt, source, t, "source_gated")
    assert torch.allclose(open_[0], x0[0], atol=5e-3)  # almost clean: the open gate reads x_t
    zero = s.x0_of(torch.zeros(2, 12), xt, source, t, "source_gated")  # a fresh model: mostly the source
    assert (zero - source).abs().max() < 0.2 * (xt - source).abs().max()


def test_training_timesteps_uniform_share_covers_the_start_of_sampling():
    s = FlowMatchSampler(SamplerConfig())
    g = torch.Generator().manual_seed(0)
    plain = s.sample_training_timesteps(20000, g, shift=3.0)
    mixed = s.sample_training_timesteps(20000, g, shift=3.0, uniform=0.2)
    # t > 0.99 T: about 0.02% of logit-normal draws; 0.2 * P(shifted uniform > 0.99 T) = 0.2 * 3.3% with the mix.
    assert (plain > 990).float().mean() < 0.002
    assert abs((mixed > 990).float().mean() - 0.2 * (1 - 0.99 / (3 - 2 * 0.99))) < 0.003
    assert plain.min() >= 0 and mixed.max() <= 1000


def test_training_timesteps_top_share_lands_in_the_last_span():
    s = FlowMatchSampler(SamplerConfig())
    g = torch.Generator().manual_seed(0)
    plain = s.sample_training_timesteps(20000, g, shift=3.0)
    topped = s.sample_training_timesteps(20000, g, shift=3.0, top=0.1)
    share = lambda t: float(((t >= 950) & (t <= 1000)).float().mean())  # noqa: E731
    # The top draws add their share on top of what the shifted logit-normal already puts there.
    assert abs(share(topped) - (0.1 + 0.9 * share(plain))) < 0.01
    assert float((topped > 990).float().mean()) > 0.015  # a fifth of the top share is within 1% of T
    assert topped.max() <= 1000

"""ERFT math and error banks (train/erft.py, train/banks.py)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from parity_support import fixtures_dir

from train.banks import ErrorBank, ErrorBanks, gather_errors
from train.erft import (
    InjectionProbs,
    TrainingSchedule,
    add_condition_error,
    bidirectional_errors,
    condition_error_window,
    draw_injections,
    flow_target,
    loss_weights,
    nearest_index,
    noisy_latent,
    schedule_timesteps,
    weighted_mse,
)

FIXTURE = fixtures_dir() / "flow_schedule.json"


def test_training_schedule_and_weights():
    sched = TrainingSchedule.build(1000, 5.0)
    assert sched.timesteps.numel() == 1000
    assert sched.timesteps[0] == pytest.approx(1000.0)
    # last sigma: 5 * 0.001 / (1 + 4 * 0.001)
    assert float(sched.sigmas[-1]) == pytest.approx(0.005 / 1.004)
    w = sched.weights
    assert float(w[0]) == 0.0  # t = 1000 is the farthest from 500
    assert float(w.mean()) == pytest.approx(1.0)
    assert 2.05 < float(w.max()) < 2.10
    # the weight peaks near t = 500
    assert abs(float(sched.timesteps[int(w.argmax())]) - 500) < 2
    # formula at one point, written out
    t = float(sched.timesteps[300])
    y = torch.exp(-2 * ((sched.timesteps - 500) / 1000) ** 2)
    expected = (
        (math.exp(-2 * ((t - 500) / 1000) ** 2) - float(y.min()))
        * 1000
        / float((y - y.min()).sum())
    )
    assert float(w[300]) == pytest.approx(expected)


def test_timestep_draw_is_uniform_index():
    sched = TrainingSchedule.build()
    g = torch.Generator().manual_seed(0)
    idx = [sched.draw(g).index for _ in range(4000)]
    assert min(idx) >= 0 and max(idx) <= 999
    # roughly uniform over indices: each quarter holds about a quarter
    for q in range(4):
        frac = sum(q * 250 <= i < (q + 1) * 250 for i in idx) / len(idx)
        assert 0.2 < frac < 0.3
    d = sched.at(10)
    assert d.t == pytest.approx(1000 * d.s)


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"no schedule fixture at {FIXTURE}")
def test_inference_grid_matches_fixture():
    grid = schedule_timesteps(50, 5.0)
    assert grid.numel() == 50
    data = json.loads(FIXTURE.read_text())
    assert torch.allclose(grid, torch.tensor(data["timesteps"], dtype=torch.float64), atol=1e-9)
    # nearest cell
    assert nearest_index(grid, 1000.0) == 0
    assert nearest_index(grid, 0.0) == 49
    assert nearest_index(grid, float(grid[17]) + 1e-3) == 17


def test_loss_weights_small_schedule():
    t = torch.tensor([4.0, 3.0, 2.0, 1.0])
    w = loss_weights(t)
    assert float(w.sum()) == pytest.approx(4.0)
    assert float(w.min()) == 0.0


def test_injection_draws_probabilities():
    rng = random.Random(0)
    probs = InjectionProbs(noise=0.01, latent=0.9, condition=0.9, clean=0.2)
    draws = [draw_injections(rng, probs) for _ in range(20000)]
    clean = sum(d.clean for d in draws) / len(draws)
    assert 0.18 < clean < 0.22
    assert all(not (d.noise or d.latent or d.condition) for d in draws if d.clean)
    lat = sum(d.latent for d in draws) / len(draws)
    assert 0.9 * 0.8 - 0.02 < lat < 0.9 * 0.8 + 0.02
    noi = sum(d.noise for d in draws) / len(draws)
    assert noi < 0.02
    always = InjectionProbs(noise=1.0, latent=1.0, condition=1.0, clean=0.0)
    d = draw_injections(rng, always)
    assert d.noise and d.latent and d.condition and not d.clean


def test_known_error_is_recovered():
    """Inject a known velocity error; E_noi / E_vid are the endpoint errors of one Euler step."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 16, 3, 4, 4, generator=g)
    n = torch.randn(1, 16, 3, 4, 4, generator=g)
    err = torch.randn(1, 16, 3, 4, 4, generator=g) * 0.3
    s = 0.37
    xt = noisy_latent(x0, n, s)
    assert torch.allclose(xt, 0.63 * x0 + 0.37 * n)
    v = flow_target(x0, n)
    v_hat = v + err
    e_noi, e_vid = bidirectional_errors(v_hat, v, s)
    # one Euler step from s to 1 with the prediction lands at n + E_noi
    assert torch.allclose(xt + (1 - s) * v_hat, n + e_noi, atol=1e-6)
    # one Euler step from s to 0 lands at x0 + E_vid
    assert torch.allclose(xt + (0 - s) * v_hat, x0 + e_vid, atol=1e-6)
    assert torch.allclose(e_noi, (1 - s) * err, atol=1e-6)
    assert torch.allclose(e_vid, -s * err, atol=1e-6)
    # a perfect prediction has no error
    z1, z2 = bidirectional_errors(v, v, s)
    assert z1.abs().max() == 0 and z2.abs().max() == 0


def test_weighted_mse_fp32():
    a = torch.ones(2, 3, dtype=torch.bfloat16)
    b = torch.zeros(2, 3, dtype=torch.bfloat16)
    loss = weighted_mse(a, b, 2.5)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(2.5)


def test_condition_window_and_injection():
    rng = random.Random(3)
    err = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1).expand(1, 16, 6, 2, 2)
    starts = set()
    for _ in range(200):
        w = condition_error_window(err, 3, rng)
        assert w.shape == (1, 16, 3, 2, 2)
        s0 = int(w[0, 0, 0, 0, 0])
        assert torch.equal(w[0, 0, :, 0, 0], torch.tensor([s0, s0 + 1, s0 + 2.0]))
        starts.add(s0)
    assert starts == {0, 1, 2, 3}
    y = torch.zeros(1, 20, 6, 2, 2)
    y[:, :4, 0] = 1
    out = add_condition_error(y, torch.ones(1, 16, 3, 2, 2))
    assert torch.equal(out[:, :4], y[:, :4])  # mask untouched
    assert torch.all(out[:, 4:, :3] == 1) and torch.all(out[:, 4:, 3:] == 0)
    assert float(y[:, 4:].abs().sum()) == 0  # input not modified


def test_bank_fill_replace_and_restore():
    bank = ErrorBank(num_cells=2, capacity=3)
    base = [torch.full((16, 2, 2, 2), float(v)) for v in (0.0, 10.0, 20.0)]
    for e in base:
        bank.add(1, e)
    assert len(bank) == 3 and bank.count(0) == 0 and bank.count(1) == 3
    assert bank.entries(1)[0].dtype == torch.bfloat16
    # full: the new error 9 is nearest to 10 -> slot 1 replaced
    slot = bank.add(1, torch.full((16, 2, 2, 2), 9.0))
    assert slot == 1 and len(bank) == 3
    vals = sorted(float(e[0, 0, 0, 0]) for e in bank.entries(1))
    assert vals == [0.0, 9.0, 20.0]
    # the fast screened search finds the brute-force nearest, also among near-duplicates
    g = torch.Generator().manual_seed(0)
    base_e = torch.randn(16, 2, 4, 4, generator=g)
    for spread in (1.0, 1e-2):
        big = ErrorBank(num_cells=1, capacity=40)
        for _ in range(40):
            big.add(0, base_e + spread * torch.randn(16, 2, 4, 4, generator=g))
        q = (base_e + spread * torch.randn(16, 2, 4, 4, generator=g)).to(torch.bfloat16)
        stored = big.entries(0)
        brute = min(range(40), key=lambda i: float((stored[i].float() - q.float()).norm()))
        assert big.nearest(0, q) == brute
    with pytest.raises(ValueError, match="differs"):
        bank.add(0, torch.zeros(16, 3, 2, 2))
    restored = ErrorBank(num_cells=2, capacity=3)
    restored.load_state_dict(bank.state_dict("x"), "x")
    assert len(restored) == 3
    for a, b in zip(bank.entries(1), restored.entries(1), strict=True):
        assert torch.equal(a, b)


def test_error_banks_cells_and_sampling():
    banks = ErrorBanks(num_cells=50, capacity=2)
    t_hi, t_lo = float(banks.grid[0]), float(banks.grid[40]) + 0.1
    assert not banks.has(t_hi)
    banks.add(torch.ones(1, 16, 2, 2, 2), -torch.ones(1, 16, 2, 2, 2), t_hi)
    banks.add(2 * torch.ones(16, 2, 2, 2), -2 * torch.ones(16, 2, 2, 2), t_lo)
    assert banks.has(t_hi) and banks.has(t_lo) and not banks.has(float(banks.grid[20]))
    rng = random.Random(0)
    assert float(banks.noise.sample(banks.cell(t_lo), rng)[0, 0, 0, 0]) == 2.0
    assert banks.video.sample(banks.cell(500.0), rng) is None
    seen = {float(banks.video.sample_any(rng)[0, 0, 0, 0]) for _ in range(50)}
    assert seen == {-1.0, -2.0}
    state = banks.state_dict()
    again = ErrorBanks(num_cells=50, capacity=2)
    again.load_state_dict(state)
    assert list(again.counts()) == list(banks.counts())
    with pytest.raises(ValueError, match="does not fit"):
        ErrorBanks(num_cells=50, capacity=1).load_state_dict(
            {"noise.0": torch.zeros(2, 16, 2, 2, 2)}
        )


def test_gather_errors_single_process():
    a, b = torch.ones(1, 16, 1, 1, 1), torch.zeros(1, 16, 1, 1, 1)
    out = gather_errors(a, b, 12.5)
    assert len(out) == 1 and out[0][2] == 12.5 and out[0][0] is a

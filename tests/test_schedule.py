import pytest
import torch

from robustwrap import PurifyConfig, ddim_grid, linear_alphas_cumprod, make_plan


def test_linear_schedule_endpoints():
    abar = linear_alphas_cumprod()
    betas = 1 - abar[1:] / abar[:-1]
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4 + 19.9e-3 / 999, 2e-2], dtype=torch.float64))
    assert abar[0] == pytest.approx(1 - 1e-4)


def test_reference_defaults_give_100_ddim_steps_from_200():
    grid = ddim_grid(500, 0.2)
    assert grid[0] == 200 and grid[-1] == 0 and len(grid) == 101
    plan = make_plan(PurifyConfig())
    assert plan.denoiser_calls == 100
    stage1 = [step for step in plan.steps if step.inpaint]
    assert [step.s for step in stage1][-1] == 100 and len(stage1) == 50
    assert all(step.t_model == step.t + 3 for step in stage1)
    assert all(step.t_model == step.t for step in plan.steps if not step.inpaint)


def test_repaint_costs_u_extra_calls_per_stage1_step():
    plan = make_plan(PurifyConfig(steps=50, resampling="repaint", resample_steps=5))
    stage1 = sum(step.inpaint for step in plan.steps)
    assert plan.denoiser_calls == len(plan.steps) + 5 * stage1


@pytest.mark.parametrize(
    "bad",
    [
        {"t_l": 0.0},
        {"t_s": 0.3},
        {"steps": 0},
        {"steps": 2},  # int(2 * 0.2) == 0: no step
        {"resample_steps": -1},
        {"tau": 1.5},
        {"top_fraction": 0.0},
        {"votes": 0},
        {"vote": "mean"},
        {"mode": "fancy"},
        {"eta": -0.1},
    ],
)
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError, match="invalid PurifyConfig"):
        PurifyConfig(**bad)

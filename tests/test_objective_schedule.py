"""`objective.schedule=official`: a contrastive optimizer step, then a reconstruction step, each with
its own Adam state (`PhasedAdam`), both saved in the DeepSpeed checkpoint and resumed exactly."""
from __future__ import annotations

import shutil

import pytest
import torch

from test_pretrain_e2e import losses, pretrain, shards  # noqa: F401  (shards: the module's fixture)
from trainer.engine.phased_adam import PhasedAdam, check_resume, state_keys


def _param(seed: int = 0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)))


def test_one_phase_is_torch_adam_and_two_phases_keep_their_own_moments():
    grads = [torch.randn(4, 3, generator=torch.Generator().manual_seed(10 + i)) for i in range(6)]
    ours, ref = _param(), _param()
    phased = PhasedAdam([{"params": [ours], "weight_decay": 0.01}], lr=0.1, betas=(0.95, 0.999))
    torch_adam = torch.optim.Adam([{"params": [ref], "weight_decay": 0.01}], lr=0.1, betas=(0.95, 0.999))
    for g in grads:
        ours.grad, ref.grad = g.clone(), g.clone()
        phased.step()
        torch_adam.step()
    assert torch.equal(ours, ref)
    # alternating phases: each phase's moments see only its own gradients
    p = _param()
    two = PhasedAdam([p], lr=0.1, betas=(0.9, 0.999))
    for i, g in enumerate(grads):
        two.use("contrastive" if i % 2 == 0 else "reconstruction")
        p.grad = g.clone()
        two.step()
    state = two.state[p]
    assert float(state["step"]) == float(state["reconstruction.step"]) == 3
    expect_c = sum(0.1 * 0.9 ** (2 - k) * grads[2 * k] for k in range(3))
    expect_r = sum(0.1 * 0.9 ** (2 - k) * grads[2 * k + 1] for k in range(3))
    assert torch.allclose(state["exp_avg"], expect_c) and torch.allclose(state["reconstruction.exp_avg"], expect_r)
    # one shared state (schedule=alternate) ends elsewhere
    q = _param()
    shared = torch.optim.Adam([q], lr=0.1, betas=(0.9, 0.999))
    for g in grads:
        q.grad = g.clone()
        shared.step()
    assert not torch.allclose(p, q)
    with pytest.raises(ValueError, match="phase"):
        two.use("both")


def test_a_two_state_run_refuses_a_universal_resume():
    check_resume("official", universal=False)
    check_resume("sum", universal=True)
    with pytest.raises(ValueError, match="two Adam states"):
        check_resume("official", universal=True)



@pytest.mark.multiproc
@pytest.mark.e2e
def test_official_schedule_saves_both_adam_states_and_resumes_them_exactly(shards, tmp_path):  # noqa: F811
    extra = ("objective.schedule=official", "deepspeed.zero_stage=2")
    full = tmp_path / "full"
    reference = pretrain(shards, full, *extra, nproc=2)                 # checkpoints at steps 4 and 8
    step4 = full / "checkpoints" / "step_00000004"
    optim_files = sorted(step4.rglob("*optim_states.pt"))
    assert len(optim_files) == 2                                         # one partition per rank
    names = [state_keys(phase) for phase in ("contrastive", "reconstruction")]
    for path in optim_files:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        states = saved["optimizer_state_dict"]["base_optimizer_state"]["state"]
        assert states
        for state in states.values():
            (c_step, c_avg, c_sq), (r_step, r_avg, r_sq) = names
            assert float(state[c_step]) == float(state[r_step]) == 4     # one step of each per batch
            # distinct moments (relative: a group of norms/biases holds second moments ~1e-11)
            assert not torch.allclose(state[c_avg], state[r_avg], atol=0)
            assert not torch.allclose(state[c_sq], state[r_sq], atol=0)
    resumed = tmp_path / "resumed"
    shutil.copytree(step4, resumed / "checkpoints" / step4.name)
    after = pretrain(shards, resumed, *extra, "--resume", "auto", nproc=2)
    assert [r["step"] for r in after] == [5, 6, 7, 8]
    assert losses(after) == {s: v for s, v in losses(reference).items() if s > 4}

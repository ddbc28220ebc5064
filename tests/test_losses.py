"""Contrastive InfoNCE (single process and 2 gloo ranks) and the masked-patch reconstruction loss."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from trainer.losses import ContrastiveLoss, masked_patch_mse

WORLD, LOCAL_BATCH, IN_DIM, DIM = 2, 3, 10, 6


def _official_loss(a, v, temperature=0.05):
    """The official forward_contrastive(bidirect_contrast=True), written out."""
    a, v = F.normalize(a, dim=-1), F.normalize(v, dim=-1)
    total = a @ v.t() / temperature
    nce_1 = -torch.mean(torch.diag(F.log_softmax(total, dim=0)))
    nce_2 = -torch.mean(torch.diag(F.log_softmax(total.t(), dim=0)))
    return (nce_1 + nce_2) / 2


def test_single_process_loss_equals_official_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    a, v = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    loss, acc = ContrastiveLoss()(a, v)
    assert torch.allclose(loss, _official_loss(a, v), atol=1e-5)
    # perfectly aligned pairs: accuracy 1, loss near 0 at this temperature
    loss_same, acc_same = ContrastiveLoss()(a, a.clone())
    assert acc_same.item() == 1.0 and loss_same.item() < loss.item()
    assert 0.0 <= acc.item() <= 1.0


def test_temperature_fixed_or_learnable():
    fixed = ContrastiveLoss(temperature=0.05)
    assert list(fixed.parameters()) == [] and math.isclose(fixed.temperature, 0.05, rel_tol=1e-5)
    learnable = ContrastiveLoss(temperature=0.07, learnable=True)
    a, v = torch.randn(4, 8), torch.randn(4, 8)
    loss, _ = learnable(a, v)
    loss.backward()
    assert learnable.logit_scale.grad is not None and learnable.logit_scale.grad.abs() > 0
    assert torch.allclose(loss, _official_loss(a, v, temperature=0.07), atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(temperature=0.0)


def test_masked_patch_mse_counts_only_dropped_patches():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[True, False, True, False, False], [False, False, False, True, True]])
    pred = target.clone()
    pred[~mask] += 100.0                         # errors on kept patches do not count
    assert masked_patch_mse(pred, target, mask).item() == 0.0
    pred = target.clone()
    pred[mask] += 2.0                            # error 2 on every pixel of every dropped patch -> 4
    assert math.isclose(masked_patch_mse(pred, target, mask).item(), 4.0, rel_tol=1e-6)
    # normalised targets: a patch's offset and scale no longer matter
    shifted = target * 3.0 + 7.0
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(masked_patch_mse(normed, shifted, mask, norm_pix_loss=True),
                          torch.tensor(0.0), atol=1e-5)


# ------------------------------------------------------------------ 2 gloo processes
def _setup():
    torch.manual_seed(0)
    encoder_a = torch.nn.Linear(IN_DIM, DIM)
    encoder_v = torch.nn.Linear(IN_DIM, DIM)
    g = torch.Generator().manual_seed(1)
    xa = torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=g)
    xv = torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=g)
    return encoder_a, encoder_v, xa, xv


def _grads(loss_fn, encoder_a, encoder_v):
    params = [*encoder_a.parameters(), *encoder_v.parameters(), *loss_fn.parameters()]
    return [p.grad.clone() for p in params]


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        encoder_a, encoder_v, xa, xv = _setup()
        loss_fn = ContrastiveLoss(temperature=0.1, learnable=True)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        loss, acc = loss_fn(encoder_a(xa[rows]), encoder_v(xv[rows]))
        loss.backward()
        grads = _grads(loss_fn, encoder_a, encoder_v)
        for grad in grads:                          # what DDP / DeepSpeed do: average over ranks
            dist.all_reduce(grad)
            grad /= WORLD
        losses = [torch.zeros(()) for _ in range(WORLD)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            torch.save({"grads": grads, "losses": losses}, os.path.join(out_dir, "dist.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_two_gloo_ranks_local_loss_gradients_equal_single_process(tmp_path):
    mp.start_processes(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="spawn")
    result = torch.load(tmp_path / "dist.pt", weights_only=True)

    encoder_a, encoder_v, xa, xv = _setup()
    loss_fn = ContrastiveLoss(temperature=0.1, learnable=True)
    loss, _ = loss_fn(encoder_a(xa), encoder_v(xv))     # the whole batch in one process
    loss.backward()
    expected = _grads(loss_fn, encoder_a, encoder_v)

    assert torch.allclose(torch.stack(result["losses"]).mean(), loss.detach(), atol=1e-6)
    assert not torch.allclose(result["losses"][0], result["losses"][1])  # really per-rank local losses
    assert len(result["grads"]) == len(expected) == 5
    for got, want in zip(result["grads"], expected):
        assert want.abs().sum() > 0
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5), (got - want).abs().max()

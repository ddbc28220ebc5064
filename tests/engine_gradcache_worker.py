"""Worker of tests/test_engine_gradcache.py, run by torchrun on 1 or 2 CPU ranks.

For each ZeRO stage given: builds the real DeepSpeed engine on a tiny AVSiam, runs the step's
backward passes on this rank's fixed random batch without gradient caching and with chunks of
CHUNK samples (same masks), and saves both full parameter gradients (after ZeRO's reduction), the
batch and the masks to OUT/rank{r}_stage{s}.pt for the test to compare and to recompute in one
process.
"""
from __future__ import annotations

import sys
from pathlib import Path

from trainer.engine.config import load_config
from trainer.engine.distributed import init_distributed

OVERRIDES = ["model.size=tiny", "model.num_classes=4", "model.audio_frames=64", "model.image_size=32",
             "model.depth=2", "model.decoder_depth=1", "deepspeed.precision=fp32", "data.batch_size=10",
             "objective.mask_ratios=[0.0,0.4]", "seed=3"]
BATCH, CHUNK = 10, 4


def main(out: Path, stages: list[int]) -> None:
    ctx = init_distributed("cpu")
    import torch
    from deepspeed.utils import safe_get_full_grad

    from trainer.engine.deepspeed_config import create_engine
    from trainer.engine.module import build_pretrain_module
    from trainer.engine.step import MaskPlan, PretrainStep
    from trainer.masking import MultiRatioMasker

    torch.set_num_threads(1)
    for stage in stages:
        cfg = load_config(None, OVERRIDES + [f"deepspeed.zero_stage={stage}"])
        torch.manual_seed(cfg.seed)
        module = build_pretrain_module(cfg)
        engine, _ = create_engine(module, cfg, ctx.world_size, "cpu")
        model = module.model
        plan = MaskPlan(MultiRatioMasker(ratios=cfg.objective.mask_ratios, audio_grid=model.audio_grid,
                                         visual_grid=model.visual_grid),
                        0.75, model.audio_grid[0] * model.audio_grid[1],
                        model.visual_grid[0] * model.visual_grid[1], seed=0, rank=ctx.rank, group=CHUNK)
        g = torch.Generator().manual_seed(100 + ctx.rank)
        batch = {"audio": torch.randn(BATCH, 64, 128, generator=g),
                 "visual": torch.randn(BATCH, 3, 32, 32, generator=g)}
        masks = plan.draw(BATCH, step=0, micro=0, device=engine.device)
        grads = {}
        for chunk in (None, CHUNK):
            cfg.objective.contrastive_chunk = chunk
            stepper = PretrainStep(engine, cfg.objective)
            stepper.accumulate([stepper.to_inputs(batch, masks)])
            grads[chunk] = {n: safe_get_full_grad(p).detach().clone()
                            for n, p in engine.module.named_parameters() if p.requires_grad}
            engine.optimizer.zero_grad()
        torch.save({"batch": batch, "masks": [(m.audio, m.visual) for m in masks],
                    "plain": grads[None], "chunked": grads[CHUNK], "world_size": ctx.world_size},
                   out / f"rank{ctx.rank}_stage{stage}.pt")
        engine.destroy()


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")])

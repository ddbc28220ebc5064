"""The DeepSpeed pretraining engine (an app: it imports the model, losses and loaders, never the reverse).

config.py            typed config tree, YAML + key=value overrides, presets (trainer/configs/)
deepspeed_config.py  the DeepSpeed config derived from it; engine creation
distributed.py       rank / world / local rank from torchrun or SLURM; gloo (CPU) or NCCL (CUDA)
module.py            what DeepSpeed wraps: AVSiam + contrastive loss; frozen parts; param groups
step.py              one step: multi-ratio contrastive + reconstruction, gradient caching
schedule.py          lr as a function of the step
checkpoint.py        save / auto-resume / complete marker / universal conversion
signals.py           SIGTERM / SIGUSR1 -> collective stop at a step boundary
metrics.py, observe.py  JSONL + TensorBoard; progress bar, throughput, MFU, memory
flops.py             model FLOPs (from model-info) and device peaks
trainer.py           the loop
export.py            consolidated fp32 safetensors from any checkpoint
"""

"""The DeepSpeed pretraining engine (an app: it imports the model, losses and loaders, never the reverse).

config.py            typed config tree (RunConfig: the fields every run has), presets (trainer/configs/)
deepspeed_config.py  the DeepSpeed config derived from it; the one engine factory and dtype helper
distributed.py       rank / world / local rank from torchrun or SLURM; gloo (CPU) or NCCL (CUDA)
module.py            what DeepSpeed wraps: AVSiam + contrastive loss; frozen parts; the param groups
step.py              one step: multi-ratio contrastive + reconstruction, gradient caching
schedule.py          lr as a function of the step
checkpoint.py        save / auto-resume / complete marker / universal conversion
signals.py           SIGTERM / SIGUSR1 -> collective stop at a step boundary
metrics.py, observe.py  JSONL + TensorBoard; the metrics meter (throughput, MFU, memory)
flops.py             model FLOPs (from model-info) and device peaks
loop.py              the one training loop (pretraining and fine-tuning plug a RunKind into it)
trainer.py           pretraining's RunKind and `train`
export.py            consolidated fp32 safetensors from any checkpoint
"""

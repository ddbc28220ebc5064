"""The DeepSpeed engine and the one training loop of pretraining and fine-tuning (an app: it
imports the model, losses and loaders, never the reverse).

config.py            typed config tree (RunConfig: the fields every run has), presets (trainer/configs/)
yaml_config.py       YAML + key=value overrides -> typed dataclasses (coercion, unknown keys)
deepspeed_config.py  the DeepSpeed config derived from it; the one engine factory and dtype helper
distributed.py       rank / world / local rank from torchrun or SLURM; gloo (CPU) or NCCL (CUDA)
module.py            what DeepSpeed wraps: AVSiam + contrastive loss; frozen parts; the param groups
step.py              one step: multi-ratio contrastive + reconstruction, gradient caching
schedule.py          lr as a function of the step
epochs.py            max_epochs -> max_steps; optimizer steps per epoch (both kinds)
phased_adam.py       two Adam states for objective.schedule=official
preflight.py, paper_recipe.py  config checks before any engine starts
checkpoint.py        save / auto-resume / complete marker / universal conversion
signals.py           SIGTERM / SIGUSR1 -> collective stop at a step boundary
metrics.py, observe.py  JSONL + TensorBoard; the metrics meter (throughput, MFU, memory)
flops.py             model FLOPs (from model-info) and device peaks
loop.py              the one training loop (pretraining and fine-tuning plug a RunKind into it)
trainer.py           pretraining's RunKind and `train`
export.py            consolidated fp32 safetensors from any checkpoint
"""

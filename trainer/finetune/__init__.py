"""Fine-tuning for classification as a kind of run on the one loop (`trainer.engine.loop`): config
and presets, the head mix, the step, the epoch callbacks (`run.py`) and weight averaging."""

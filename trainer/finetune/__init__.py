"""Fine-tuning for classification on the pretraining engine: config and presets, the head mix,
parameter groups with lr multipliers, the step, the loop and weight averaging."""

"""Batch-script templates rendered by cluster/sbatch_script.py (shipped as package data)."""

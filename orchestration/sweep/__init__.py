"""Adaptive hyperparameter sweeps: ASHA over checkpointed trials, sampled by Optuna."""

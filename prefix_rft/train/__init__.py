"""The training loop: the trainer, log-prob passes, checkpoints, multi-GPU helpers."""

"""Evaluation: the benchmark registry, the avg@k protocol, held-out accuracy, metrics, reports."""

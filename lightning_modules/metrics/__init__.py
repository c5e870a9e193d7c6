"""Metrics, torchmetrics-style (update/compute, DDP-safe)."""

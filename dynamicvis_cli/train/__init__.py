"""Fine-tuning: config (YAML + overrides), loop, optimiser and schedule, checkpoints and resume,
DDP, logs, metrics, token drop. :func:`dynamicvis_cli.train.loop.fit` is the one entry point."""

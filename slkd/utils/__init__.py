"""Generic run machinery used by the trainer and the launcher: checkpoints, records,
distributed set-up. Nothing here imports mdistiller or reads a config node by name."""

"""Pure-torch losses: no mdistiller, no config."""

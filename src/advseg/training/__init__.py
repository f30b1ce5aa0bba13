"""advseg.training."""

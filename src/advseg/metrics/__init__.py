"""advseg.metrics."""

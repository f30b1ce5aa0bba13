"""advseg.experiments."""

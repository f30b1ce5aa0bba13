"""advseg.evaluation."""

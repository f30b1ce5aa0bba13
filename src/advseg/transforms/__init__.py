"""advseg.transforms."""

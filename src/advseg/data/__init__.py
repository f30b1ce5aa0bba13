"""advseg.data."""

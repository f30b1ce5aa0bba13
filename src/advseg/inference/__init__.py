"""advseg.inference."""

"""advseg.synthesis."""

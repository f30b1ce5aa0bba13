"""advseg.networks."""

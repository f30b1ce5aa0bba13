"""advseg.losses."""

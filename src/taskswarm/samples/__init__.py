"""Real programs built on taskswarm; each runs with `taskswarm run -m taskswarm.samples.NAME`."""

"""Dask and Ray as plugins: a scheduler and task managers that reach the core only through its
contracts."""

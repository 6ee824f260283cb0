"""The slave node and its task managers (the process pool and its workers)."""

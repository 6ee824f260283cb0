"""Task managers (ITaskManager): what runs tasks on a slave. Chosen by name via entry points."""

"""Operations: the command line, settings records, environments, progress and the status view."""

"""`python -m taskswarm` is the same command as `taskswarm`."""

from .ops.cli import main

if __name__ == "__main__":
    main()

"""The three kinds of node: master, slave and application node, each with its own loop."""

"""The master node: its socket-free core, its tables, the journal, and the node around them."""

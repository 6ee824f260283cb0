"""The wire: typed messages, their codec (framing, MAC, payload digests) and transport helpers."""

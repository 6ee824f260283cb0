"""Clusters spread over hosts made of Linux network namespaces (needs root and iproute2)."""

"""The node agent: watch the store, compute, apply; serve the CNI socket; health, metrics."""

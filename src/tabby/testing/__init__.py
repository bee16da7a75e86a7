"""Real peers and helpers for tests, the lab and benchmarks (no mocks)."""

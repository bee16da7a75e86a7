"""tabby's benchmarks: each compares tabby with a peer measured in the same run."""

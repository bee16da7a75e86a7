"""Kubernetes: the control plane tabby runs in labs and tests, and what tabby
serves to a cluster (its CustomResourceDefinitions)."""

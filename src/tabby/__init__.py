"""tabby: a Calico-style network for Kubernetes, written in Python."""

__version__ = "0.1.0"

"""Applying desired state to the kernel, by difference, touching only what tabby owns.

``netlink`` is the one seam to the kernel (the only importer of pyroute2);
``routes``, ``sysctls`` and ``pods`` are the reconcilers built on it.
"""

"""Applying desired state to the kernel, by difference, touching only what tabby owns.

``netlink`` is the one seam to the kernel (the only importer of pyroute2);
``routes``, ``sysctls``, ``vxlan`` and ``pods`` are the reconcilers built on it,
each taking its ``Opener`` from the constructor and naming the calls it makes in
a Protocol; ``nft`` applies the nftables table through an ``NftRunner``. The
fakes standing in for both (and for the clock) are in ``tabby.testing.fakes``.
"""

"""Applying desired state to the kernel, by difference, touching only what tabby owns.

``netlink`` is the seam to the kernel (the only importer of pyroute2), with
``rtlink`` (raw sockets, pod wiring) answering in the same ``nlvalues``;
``routes``, ``sysctls``, ``vxlan`` and ``pods`` are the reconcilers built on
them, each taking its ``Opener`` from the constructor and naming the calls it
makes in a Protocol. Every raw netlink socket and codec (routes, links, NFLOG,
conntrack) stands on ``nlsock``. ``nft`` applies the nftables table through an
``NftRunner``. The fakes standing in for both (and for the clock) are in
``tabby.testing.fakes``.
"""

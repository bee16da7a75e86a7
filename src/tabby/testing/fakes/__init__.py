"""In-memory stand-ins for the kernel, nft and the clock, so dataplane rules test without root.

    FakeNetlink   network namespaces as data, with the ``Netlink`` adapter's face
                  (``FakeNetlink.open`` is every reconciler's ``Opener``)      netlink.py
                  and the kernel rules it keeps, each checked on Linux        kernel.py
    FakeNft       an ``NftRunner`` keeping the tables its scripts built       nft.py
    FakeClock     a monotonic clock that moves when told                      nft.py

tests/netns/test_fakes_agree.py replays one sequence of route operations on a
real namespace and on FakeNetlink and checks that both end alike.
"""

from tabby.testing.fakes.netlink import FakeNetlink
from tabby.testing.fakes.nft import FakeClock, FakeNft

__all__ = ["FakeClock", "FakeNetlink", "FakeNft"]

"""IP address management in Calico's design: pools cut into blocks, blocks claimed
by nodes through affinities, addresses handed out per handle.

    from tabby.ipam import IPAM, Assignment
    a = IPAM(client).assign(handle_id, node, num_v4=1, num_v6=1, attrs={...})

Reports (``tabby.ipam.report``: show, check) and the standalone CNI IPAM plugin
(``tabby.ipam.plugin``, the ``tabby-ipam`` command) build on the engine. Names
load on first use, so the plugin answers VERSION without importing the model.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: tabby-ipam's exec path imports this
if TYPE_CHECKING:  # package on every pod, and typing costs it ~3 ms
    from typing import Any

    from tabby.ipam.blocks import RESERVED_HANDLE, Reservation
    from tabby.ipam.engine import IPAM, Assignment

__all__ = ["IPAM", "RESERVED_HANDLE", "Assignment", "Reservation"]

_HOME = {"IPAM": "engine", "Assignment": "engine", "RESERVED_HANDLE": "blocks",
         "Reservation": "blocks"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'tabby.ipam' has no attribute {name!r}")
    return getattr(__import__(f"tabby.ipam.{home}", fromlist=[name]), name)

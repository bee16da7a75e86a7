"""Pure calculation: a store ``Snapshot`` and a node name in, desired state out. No I/O."""

from tabby.calc.routes import Route, desired_routes
from tabby.snapshot import Snapshot

__all__ = ["Route", "Snapshot", "desired_routes"]

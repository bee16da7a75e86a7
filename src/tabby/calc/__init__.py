"""Pure calculation: a store ``Snapshot`` and a node name in, desired state out. No I/O.

``tabby.calc.node.NodeCalculator`` is the entry point: one ``DesiredState`` per
pass. (Nothing is imported here, so that importing one calc module does not
import every feature.)
"""

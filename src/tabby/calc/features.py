"""Imports every module that registers an nftables contributor (one line each)."""
import tabby.calc.natoutgoing
import tabby.calc.vxlan
import tabby.policy.nftables
import tabby.services.nft  # noqa: F401

"""Imports every module that registers an nftables contributor (one line each)."""

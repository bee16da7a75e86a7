"""The ``tabby`` command line (see main.py)."""

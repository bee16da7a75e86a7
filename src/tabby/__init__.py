"""tabby: a Calico-style network for Kubernetes, written in Python.

``__version__`` is the one place the version is written: the distribution
(``tabby-network``, pyproject's ``[tool.setuptools.dynamic]``), ``tabby
version``, ``tabby --version`` and the directory ``tabby install-cni`` copies
itself into all read it from here.
"""

__version__ = "0.1.0"
DISTRIBUTION = "tabby-network"  # the name on PyPI; the import name and commands stay "tabby"

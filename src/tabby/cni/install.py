"""Put ``tabby-cni`` where a container runtime looks for plugins.

A runtime executes the plugin once per pod operation, so the launcher execs
a real interpreter directly (never a pyenv shim: ~43 ms against ~8 ms here)
with ``-I -S`` (no site, no user paths, no environment variables steering
Python) and puts tabby's own import root on ``sys.path`` by hand::

    #!/usr/bin/python3.11 -IS
    import sys
    sys.path.insert(0, '/work/main/src')
    from tabby.cni.plugin import main
    sys.exit(main())

``-IS`` is one argument: Linux hands everything after the interpreter path to
it as a single word, and ``-I -S`` would arrive as ``"-I -S"``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import tabby
from tabby.errors import ConfigError

PLUGIN_NAME = "tabby-cni"
REFERENCE_PLUGINS_DIR = Path("/usr/lib/cni")


def real_interpreter() -> Path:
    """The interpreter running now, symlinks (venv, alternatives) resolved."""
    return Path(os.path.realpath(sys.executable))


def import_root() -> Path:
    """The directory holding the ``tabby`` package (``src/`` in a checkout)."""
    return Path(tabby.__file__).resolve().parent.parent


def launcher_text(interpreter: Path, root: Path) -> str:
    if any(c.isspace() for c in str(interpreter)):
        raise ConfigError(f"interpreter path {interpreter} contains whitespace; "
                         "a #! line cannot carry it")
    return (f"#!{interpreter} -IS\n"
            f"# tabby-cni launcher written by tabby.cni.install; regenerate, do not edit.\n"
            f"import sys\n"
            f"sys.path.insert(0, {str(root)!r})\n"
            f"from tabby.cni.plugin import main\n"
            f"sys.exit(main())\n")


def write_plugin(bin_dir: str | os.PathLike[str], *, interpreter: Path | None = None,
                 name: str = PLUGIN_NAME) -> Path:
    """Write (atomically, mode 0755) the launcher ``bin_dir/name`` and return its path."""
    directory = Path(bin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    text = launcher_text(interpreter or real_interpreter(), import_root())
    target = directory / name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def link_reference_plugins(bin_dir: str | os.PathLike[str],
                           names: Iterable[str] | None = None,
                           source: Path = REFERENCE_PLUGINS_DIR) -> list[Path]:
    """Symlink reference plugins (all of ``source`` by default) into ``bin_dir``."""
    directory = Path(bin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = sorted(names) if names is not None else sorted(
        p.name for p in source.iterdir() if p.is_file() and os.access(p, os.X_OK))
    links = []
    for plugin in wanted:
        origin = source / plugin
        if not origin.is_file():
            raise ConfigError(f"reference CNI plugin {origin} is missing "
                                    "(Debian package containernetworking-plugins)")
        link = directory / plugin
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(origin)
        links.append(link)
    return links

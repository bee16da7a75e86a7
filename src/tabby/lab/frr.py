"""The ToR's router: FRR (zebra + bgpd) in the ToR's namespace, for ``--bgp`` labs.

    bgpd_conf(t) -> str               the ToR's BGP config (pure)
    start(t, state_file)              write the configs, start zebra then bgpd, record both
    vtysh(state, *commands) -> str    ask FRR (e.g. ``show bgp ipv4 unicast json``)

The ToR is AS 65000 and peers over eBGP with every node (``remote-as
external``: whatever the node's AS) at its rack's addresses; routes it learns
go into its kernel (zebra), so the outside client behind it reaches the pods.
It is a graceful-restart helper (FRR's default), so a node's BIRD restart
does not withdraw that node's routes. As RECIPES.md found: the daemons run as
the ``frr`` user in an frr-owned directory (``<lab dir>/tor``), zebra is needed
even for bgpd alone, and each neighbour is activated per address family.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import time
from pathlib import Path

from tabby.errors import LabError
from tabby.lab import system
from tabby.lab.bgp import TOR_AS
from tabby.lab.state import LabState, Proc, StateFile
from tabby.lab.topology import Topology

FRR_BIN = Path("/usr/lib/frr")
FRR_USER = "frr"
START_TIMEOUT = 15.0


def frr_dir(lab_dir: Path) -> Path:
    return lab_dir / "tor"


def router_id(t: Topology) -> str:
    gateway = t.racks[0].gateway_v4
    return str(gateway.ip) if gateway is not None else "10.255.255.1"


def bgpd_conf(t: Topology, log: Path | None = None) -> str:
    lines = ["frr defaults datacenter", f"hostname {t.tor_netns}"]
    if log is not None:
        lines.append(f"log file {log} informational")
    lines += ["!", f"router bgp {TOR_AS}", f" bgp router-id {router_id(t)}",
              " no bgp ebgp-requires-policy", " no bgp default ipv4-unicast",
              " no bgp network import-check", " bgp bestpath as-path multipath-relax",
              " bgp graceful-restart"]
    neighbours = {v: [a.ip for n in t.nodes for a in n.addresses() if a.version == v]
                  for v in t.families}
    for v, addresses in neighbours.items():
        group = f"NODES{v}"
        lines += [f" neighbor {group} peer-group", f" neighbor {group} remote-as external",
                  f" neighbor {group} timers connect 1"]
        lines += [f" neighbor {a} peer-group {group}" for a in addresses]
    for v in neighbours:
        lines += [f" address-family ipv{v} unicast", f"  neighbor NODES{v} activate",
                  "  maximum-paths 64", " exit-address-family"]
    return "\n".join([*lines, "!", ""])


def start(t: Topology, state_file: StateFile) -> None:
    """Start zebra and bgpd in the ToR's namespace; each is recorded as it starts."""
    directory = frr_dir(state_file.dir)
    directory.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwnam(FRR_USER)
    files = {"zebra.conf": f"hostname {t.tor_netns}\n", "vtysh.conf": "",
             "bgpd.conf": bgpd_conf(t, directory / "bgpd.log")}
    for name, text in files.items():
        (directory / name).write_text(text)
    for path in (directory, *(directory / name for name in files)):
        os.chown(path, user.pw_uid, user.pw_gid)
    for daemon, ready in (("zebra", "zserv.api"), ("bgpd", "bgpd.vty")):
        argv = [str(FRR_BIN / daemon), "-u", FRR_USER, "-g", FRR_USER, "-P", "0",
                "--vty_socket", str(directory), "-z", str(directory / "zserv.api"),
                "-f", str(directory / f"{daemon}.conf"), "-i", str(directory / f"{daemon}.pid")]
        log = directory / f"{daemon}.out"
        proc = system.spawn(system.in_netns(t.tor_netns, argv), f"{daemon} tor", log)
        _record(state_file, proc)
        _wait_for(directory / ready, proc, log)


def _record(state_file: StateFile, proc: Proc) -> None:
    state_file.mutate(lambda s: dataclasses.replace(s, procs=(*s.procs, proc)))


def _wait_for(path: Path, proc: Proc, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if not system.alive(proc):
            raise LabError(f"{proc.role} exited at start; the end of {log}:\n{system.tail(log)}")
        if time.monotonic() > deadline:
            raise LabError(f"{proc.role} did not create {path} within {START_TIMEOUT:g}s")
        time.sleep(0.02)


def vtysh(state: LabState, *commands: str) -> str:
    """Run vtysh commands against the lab's ToR; their output."""
    directory = frr_dir(state.dir)
    argv = ["vtysh", "--vty_socket", str(directory), "--config_dir", str(directory)]
    for command in commands:
        argv += ["-c", command]
    return system.run(system.in_netns(state.topology.tor_netns, argv))

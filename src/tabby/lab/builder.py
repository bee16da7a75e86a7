"""Build a lab from its ``Topology`` and tear down exactly what was built.

    Lab(plan("tabby", nodes=3)).up(progress)    ->  LabState (also in state.json)
    down("tabby")                               ->  every recorded process stopped,
                                                    link and namespace deleted, dir removed

``up`` goes: record the namespaces, make them and set their sysctls
(accept_dad=0 before any link exists), wire the fabric (the ToR's bridge, one
veth per node, addresses, default routes via the ToR), write each node's CNI
files, start the datastore and seed it (pools, Node objects, the ``default``
namespace), start one agent per node inside its namespace and wait, with a
deadline, until each serves CNI STATUS. A failure tears down what was made and
raises with the reason (an agent's log tail when an agent did not come up).

In Kubernetes mode the agents and the controllers are started from tabby's
manifests (``tabby.kube.manifests``, rendered for the lab): the ``tabby-node``
DaemonSet's and the ``tabby-controllers`` Deployment's container command, args
and env, resolved as a kubelet would (``tabby.lab.kubelet.containers``: its
docstring says how close that is), with the lab's directories for the host
paths (``/run/tabby`` is the node's directory, BIRD's under it the node's
``bgp``) and, instead of in-cluster credentials, a kubeconfig holding a token
of the workload's ServiceAccount. The init container (``tabby install-cni``)
is not run: the node's CNI files are written by the lab beforehand.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tabby.errors import LabError, TabbyError
from tabby.lab import bgp, datastore, frr, system
from tabby.lab.cni import CNIRuntime, cni_conflist, portmap_version
from tabby.lab.state import LabState, Link, NodeRecord, Proc, StateFile, lab_dir, load
from tabby.lab.topology import NodePlan, Topology

Progress = Callable[[str, int, int], None]  # (stage, done, total)
T = TypeVar("T")

NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}
AGENT_METRICS = "127.0.0.1:9099"  # inside each node's own namespace
AGENT_TIMEOUT = 60.0
KUBELET_TIMEOUT = 60.0
EARLY_ROLES = ("kubelet ", "controllers")  # stopped first: they act on the API server's news
WORKERS = 8


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


class Lab:
    def __init__(self, topology: Topology, *, agent_timeout: float = AGENT_TIMEOUT) -> None:
        self.topology = topology
        self.dir = lab_dir(topology.name)
        self.state_file = StateFile(self.dir)
        self.agent_timeout = agent_timeout

    def up(self, progress: Progress | None = None) -> LabState:
        """Build the lab; on any failure tear down what was made and re-raise."""
        report = progress or _no_progress
        self._claim()
        try:
            self._fabric(report)
            self._node_files()
            self._datastore(report)
            if self.topology.bgp != "none":
                frr.start(self.topology, self.state_file)
                report("tor router", 1, 1)
            self._agents(report)
            return self.state_file.mutate(lambda s: dataclasses.replace(s, phase="up"))
        except BaseException as exc:
            try:
                teardown(self.state_file.read())
            except TabbyError as cleanup:
                exc.add_note(f"tearing the half-built lab down failed too: {cleanup}")
            raise

    # -- steps ----------------------------------------------------------------

    def _claim(self) -> None:
        t = self.topology
        if load(t.name) is not None:
            raise LabError(f"lab {t.name} is already up (tabby lab down --name {t.name})")
        taken = sorted(set(t.netns()) & system.netns_list())
        if taken:
            raise LabError(f"lab {t.name}: namespaces {', '.join(taken)} exist but no lab state"
                           " records them; delete them (ip netns delete NAME) first")
        if self.dir.exists():  # our own directory, left without a state file
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.state_file.write(LabState(name=t.name, dir=self.dir, phase="building",
                                       options=t.options(), datastore=""))

    def _fabric(self, report: Progress) -> None:
        t = self.topology
        ext = (t.ext.tor_if,) if t.ext else ()
        links = tuple(Link(t.tor_netns, name) for name in
                      (*(r.bridge for r in t.racks), *(n.tor_if for n in t.nodes), *ext))
        self.state_file.mutate(lambda s: dataclasses.replace(s, netns=t.netns(), links=links))
        system.add_netns(t.netns())
        parallel(lambda ns: system.sysctl(ns, NODE_SYSCTLS), t.netns())
        report("namespaces", len(t.netns()), len(t.netns()))
        system.ip_batch(tor_commands(t), t.tor_netns)
        parallel(lambda n: system.ip_batch(node_commands(t, n), n.netns), t.nodes)
        if t.ext:
            system.ip_batch(ext_commands(t), t.ext.netns)
        report("fabric", len(t.nodes), len(t.nodes))

    def _node_files(self) -> None:
        from tabby.cni.install import link_reference_plugins, write_plugin
        t = self.topology
        with_portmap = portmap_version()
        records = []
        for node in t.nodes:
            rec = NodeRecord(node.name, node.netns, self.dir / node.name)
            rec.cni_conflist.parent.mkdir(parents=True)
            conf = cni_conflist(rec.cni_socket, t.mtu, portmap_version=with_portmap)
            rec.cni_conflist.write_text(json.dumps(conf, indent=2) + "\n")
            link_reference_plugins(rec.cni_bin_dir)
            write_plugin(rec.cni_bin_dir)
            records.append(rec)
        self.state_file.mutate(lambda s: dataclasses.replace(s, nodes=tuple(records)))

    def _datastore(self, report: Progress) -> None:
        url = datastore.start(self.topology, self.state_file)
        datastore.seed(self.topology, url)
        report("datastore", 1, 1)

    def _agents(self, report: Progress) -> None:
        t = self.topology
        state = self.state_file.read()
        for node in state.nodes:
            url = datastore.node_url(state, node.name)
            if t.datastore == "kubernetes":
                argv = manifest_argv(state, "DaemonSet", url, node)
            else:
                argv = [*agent_argv(url, node, t.mtu, node_address(t, node.name)),
                        *bgp.agent_flags(t, node)]
            proc = system.spawn(system.in_netns(node.netns, argv), f"agent {node.name}",
                                node.agent_log)
            record = dataclasses.replace(node, agent=proc)
            self.state_file.mutate(functools.partial(LabState.with_node, node=record))
        wait_agents(self.state_file.read(), self.agent_timeout, report)
        if t.bgp != "none":
            state = self.state_file.read()
            bgp.wait_sessions(state, bgp.SESSION_TIMEOUT, report)
            birds = bgp.birds(state)  # each agent started its node's BIRD
            self.state_file.mutate(lambda s: dataclasses.replace(s, procs=(*s.procs, *birds)))
        if t.datastore == "kubernetes":
            self._kubernetes_parts(report)

    def _kubernetes_parts(self, report: Progress) -> None:
        """A kubelet stand-in per node (pods come from the API server now), and the
        cluster controllers (LoadBalancer addresses)."""
        from tabby.kube.cluster import CONTROLLERS_ACCOUNT
        state = self.state_file.read()
        for node in state.nodes:
            kc = datastore.identity(state, f"kubelet-{node.name}", f"system:node:{node.name}",
                                    ["system:nodes"])
            argv = [sys.executable, "-m", "tabby.lab.kubelet", "--lab", state.name,
                    "--node", node.name, "--kubeconfig", str(kc)]
            proc = system.spawn_ready(argv, f"kubelet {node.name}", node.dir / "kubelet.log",
                                      KUBELET_TIMEOUT)
            self.state_file.mutate(functools.partial(_first_proc, proc=proc))
            report("kubelets", state.nodes.index(node) + 1, len(state.nodes))
        kc = datastore.account_kubeconfig(state, "controllers", CONTROLLERS_ACCOUNT)
        argv = manifest_argv(state, "Deployment", f"kubernetes://{kc}")
        proc = system.spawn_ready(argv, "controllers", self.dir / "controllers.log",
                                  KUBELET_TIMEOUT)
        self.state_file.mutate(functools.partial(_first_proc, proc=proc))
        report("controllers", 1, 1)


def _first_proc(state: LabState, proc: Proc) -> LabState:
    return dataclasses.replace(state, procs=(proc, *state.procs))


def tor_commands(t: Topology) -> list[str]:
    cmds = ["link set lo up"]
    for rack in t.racks:
        cmds += [f"link add {rack.bridge} mtu {t.mtu} type bridge",
                 *(f"addr add {gw} dev {rack.bridge} nodad" if gw.version == 6
                   else f"addr add {gw} dev {rack.bridge}" for gw in rack.gateways()),
                 f"link set {rack.bridge} up"]
    for node in t.nodes:
        cmds += [f"link add {node.tor_if} mtu {t.mtu} type veth"
                 f" peer name {node.fabric_if} netns {node.netns}",
                 f"link set {node.tor_if} master {t.rack(node.rack).bridge} up"]
    if t.ext:
        cmds += [f"link add {t.ext.tor_if} mtu {t.mtu} type veth"
                 f" peer name {t.ext.ext_if} netns {t.ext.netns}",
                 *(f"addr add {gw} dev {t.ext.tor_if}" + (" nodad" if gw.version == 6 else "")
                   for gw in t.ext.gateways), f"link set {t.ext.tor_if} up"]
    return cmds


def node_commands(t: Topology, node: NodePlan) -> list[str]:
    rack = t.rack(node.rack)
    cmds = ["link set lo up", f"link set {node.fabric_if} up"]
    cmds += [f"addr add {a} dev {node.fabric_if}" + (" nodad" if a.version == 6 else "")
             for a in node.addresses()]
    # A default route via the ToR: proxy ARP for the pods' 169.254.1.1 needs a unicast route.
    cmds += [f"route add default via {gw.ip} dev {node.fabric_if}" for gw in rack.gateways()]
    return cmds


def ext_commands(t: Topology) -> list[str]:
    """The outside client: its address behind the ToR, default routes via the ToR."""
    assert t.ext is not None
    cmds = ["link set lo up", f"link set {t.ext.ext_if} up"]
    cmds += [f"addr add {a} dev {t.ext.ext_if}" + (" nodad" if a.version == 6 else "")
             for a in t.ext.addresses]
    return cmds + [f"route add default via {gw.ip} dev {t.ext.ext_if}" for gw in t.ext.gateways]


def agent_argv(url: str, node: NodeRecord, mtu: int, address: str = "") -> list[str]:
    """The agent's command line; ``address``: the node's, where ``/flows`` is served for
    ``tabby flows`` elsewhere (the first address of its Node, as a cluster's would be)."""
    from tabby.agent.http import FLOWS_PORT
    flows = ["--flows-addr", f"{address}:{FLOWS_PORT}"] if address else []
    return [*tabby_command(), "--datastore", url, "agent", "--node", node.name,
            "--cni-socket", str(node.cni_socket), "--metrics-addr", AGENT_METRICS,
            "--mtu", str(mtu), "--flow-logs", "on", "--flow-log-path", str(node.dir / "flows.db"),
            *flows]


def node_address(t: Topology, name: str) -> str:
    """Node ``name``'s first fabric address (its Node's first InternalIP), or ""."""
    plan = next((n for n in t.nodes if n.name == name), None)
    addresses = plan.addresses() if plan is not None else ()
    return str(addresses[0].ip) if addresses else ""


def manifest_argv(state: LabState, kind: str, url: str, node: NodeRecord | None = None,
                  ) -> list[str]:
    """tabby's DaemonSet (on ``node``) or Deployment container as a lab process: ``env``
    with the container's variables (the datastore: ``url``), then its command."""
    from tabby.kube import manifests
    from tabby.lab.kubelet.containers import container_process
    docs = manifests.documents(datastore.install_options(state.topology))
    workload = next(d for d in docs if d["kind"] == kind)
    template = workload["spec"]["template"]
    host_dirs = {} if node is None else {
        manifests.RUN_DIR: str(node.dir), manifests.BGP_DIR: str(bgp.bird_dir(node)),
        "/opt/cni/bin": str(node.cni_bin_dir), "/etc/cni/net.d": str(node.cni_conflist.parent)}
    proc = container_process(
        template, template["spec"]["containers"][0]["name"],
        node=node.name if node else "", namespace=workload["metadata"]["namespace"],
        config_maps={d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"},
        host_dirs=host_dirs,
        host_ip=node_address(state.topology, node.name) if node is not None else "")
    env = {**proc.env, "TABBY_DATASTORE": url}
    argv = list(proc.argv)
    if argv[0] == "tabby":  # the image's; here the lab's own installation
        argv[:1] = tabby_command()
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]


def tabby_command() -> list[str]:
    """The ``tabby`` entry point of the running installation."""
    script = Path(sys.executable).parent / "tabby"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "tabby.cli.main"]


def wait_agents(state: LabState, timeout: float, report: Progress) -> None:
    """Poll until every node's agent answers CNI STATUS; LabError with the log tail of
    an agent that exited or did not come up in time."""
    pending = {n.name: n for n in state.nodes}
    total = len(pending)
    deadline = time.monotonic() + timeout
    while pending:
        for name, node in list(pending.items()):
            if node.agent is None or not system.alive(node.agent):
                raise LabError(f"agent of {name} exited while starting; the end of"
                               f" {node.agent_log}:\n{system.tail(node.agent_log)}")
            if node.cni_socket.exists() and CNIRuntime(node).ready():
                del pending[name]
                report("agents", total - len(pending), total)
        if pending and time.monotonic() > deadline:
            node = next(iter(pending.values()))
            raise LabError(f"agents of {', '.join(sorted(pending))} not ready after"
                           f" {timeout:g}s; the end of {node.agent_log}:\n"
                           f"{system.tail(node.agent_log)}")
        if pending:
            time.sleep(0.1)


def down(name: str, grace: float = 5.0) -> LabState:
    """Tear lab ``name`` down; the state it had. LabError if no such lab is up."""
    state_file = StateFile(lab_dir(name))
    if load(name) is None:
        raise LabError(f"no lab named {name!r} is up")
    state = state_file.mutate(lambda s: dataclasses.replace(s, phase="down"))
    teardown(state, grace)
    return state


def teardown(state: LabState, grace: float = 5.0) -> None:
    """Stop the recorded processes, delete the recorded links and namespaces, then the
    lab's directory. Safe to repeat; tolerates what is already gone."""
    early = [p for p in state.procs if p.role.startswith(EARLY_ROLES)]
    system.stop(early, grace)  # kubelet stand-ins and controllers: nobody acts on news now
    workloads = [p for p in state.all_procs() if p not in state.procs]
    system.stop(workloads, grace)  # listeners and agents, while their datastore still answers
    # BIRDs the agents (re)started since they were recorded, now that no agent restarts one
    birds = [p for p in bgp.birds(state) if p not in state.procs]
    rest = [p for p in state.procs if p not in early]
    for proc in (*birds, *rest):  # one by one: etcd members stopped together stall
        system.stop([proc], grace)
    present = system.netns_list()
    by_netns: dict[str, list[str]] = {}
    for link in state.links:
        if link.netns in present:
            by_netns.setdefault(link.netns, []).append(link.name)
    for netns, names in by_netns.items():
        existing = system.link_names(netns)
        system.ip_batch([f"link delete {n}" for n in names if n in existing], netns)
    system.delete_netns(state.all_netns())
    shutil.rmtree(state.dir, ignore_errors=True)


def parallel(work: Callable[[T], Any], items: Iterable[T]) -> list[Any]:
    """``work`` over ``items`` on a few threads (the work is waiting on ``ip``);
    the first error is raised after all finished."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=min(WORKERS, max(1, len(items)))) as pool:
        futures = [pool.submit(work, item) for item in items]
    return [f.result() for f in futures]


__all__: Sequence[str] = ("Lab", "Progress", "down", "teardown")

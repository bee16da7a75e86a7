"""tabby's install manifests: the shipped file, the least-privilege roles, the DaemonSet, and
the lab's reading of a container spec as a process (``tabby.lab.kubelet.containers``).

- manifests/tabby.yaml is what ``tabby manifests`` prints (``make manifests``);
- the roles follow the code: every kind the agent's cache follows gets list+watch, Secrets
  only in tabby-system, no ``*``, no patch, no escalate/bind/impersonate, no writes to Pods
  or core Nodes;
- bad options get one line naming the option and exit 1.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from tabby.agent.cache import kinds
from tabby.cli.agent import DEFAULT_METRICS_ADDR
from tabby.cli.main import main
from tabby.errors import ConfigError, LabError
from tabby.kube import cluster, manifests
from tabby.kube.manifests import Options
from tabby.lab.builder import manifest_argv
from tabby.lab.kubelet.containers import container_process, expand
from tabby.lab.state import LabState, NodeRecord
from tabby.lab.topology import plan
from tabby.store.kuberesources import default_resources

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "manifests" / "tabby.yaml"
SECRETS_PATH = "/api/v1/namespaces/tabby-system/secrets"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def by_kind(docs: list[dict[str, Any]], kind: str, name: str = "") -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# -- the shipped file ---------------------------------------------------------------------

def test_the_shipped_file_is_what_tabby_manifests_prints(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    code, out, _ = run(capsys, "manifests")
    assert code == 0
    assert SHIPPED.read_text() == out, "manifests/tabby.yaml is stale: run `make manifests`"


def test_documents_come_in_the_order_kubectl_needs() -> None:
    docs = list(yaml.safe_load_all(SHIPPED.read_text()))
    kinds_in_order = [d["kind"] for d in docs]
    crds = kinds_in_order.count("CustomResourceDefinition")
    assert crds == len([d for d in docs if d["kind"] == "CustomResourceDefinition"]) > 10
    assert kinds_in_order[:crds] == ["CustomResourceDefinition"] * crds
    assert kinds_in_order[crds] == "Namespace"
    assert kinds_in_order[-1] == "IPPool"
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
            "ConfigMap", "DaemonSet", "Deployment"} <= set(kinds_in_order)
    namespaced = [d for d in docs if "namespace" in d["metadata"]]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"tabby-system"}


# -- roles --------------------------------------------------------------------------------

def test_the_node_role_lists_and_watches_every_kind_the_agent_follows() -> None:
    rules, _ = cluster.node_rules()
    granted = grants(rules)
    resources = default_resources()
    for name in kinds():
        res = resources[name]
        if res.namespace:  # Secrets: in their namespace's Role
            continue
        assert {"list", "watch"} <= granted[(res.group, res.plural)], name


def test_the_node_role_grants_exactly_the_writes_the_code_makes() -> None:
    granted = grants(cluster.node_rules()[0])
    writes = {key: verbs & {"create", "update", "delete"} for key, verbs in granted.items()}
    assert {k: sorted(v) for k, v in writes.items() if v} == {
        ("tabby.dev", "nodes"): ["create", "update"],
        ("tabby.dev", "workloadendpoints"): ["create", "delete", "update"],
        ("tabby.dev", "ipamblocks"): ["create", "delete", "update"],
        ("tabby.dev", "blockaffinities"): ["create", "delete", "update"],
        ("tabby.dev", "ipamhandles"): ["create", "delete", "update"],
    }
    assert granted[("", "nodes")] == {"get"}  # read its own, never write
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert ("", "secrets") not in granted and ("", "configmaps") not in granted


def test_secrets_only_in_tabby_system_and_the_store_keeps_to_it() -> None:
    _, namespaced = cluster.node_rules()
    assert namespaced == {"tabby-system": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]}
    secrets = default_resources()["secrets"]
    assert secrets.collection(None) == SECRETS_PATH
    assert secrets.collection("tabby-system") == SECRETS_PATH
    assert secrets.holds("tabby-system") and secrets.holds(None)
    assert not secrets.holds("default")
    assert default_resources()["pods"].collection(None) == "/api/v1/pods"


def test_no_role_grants_wildcards_patch_or_escalation() -> None:
    docs = cluster.rbac()
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert {d["metadata"]["name"] for d in roles} == {"tabby-node", "tabby-node-secrets",
                                                      "tabby-controllers"}
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
            assert not set(rule["verbs"]) & {"patch", "escalate", "bind", "impersonate",
                                            "deletecollection"}, rule
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule
    controllers = grants(by_kind(docs, "ClusterRole", "tabby-controllers")["rules"])
    assert controllers[("", "services/status")] == {"update"}
    assert controllers[("", "nodes")] == {"get", "list", "watch"}
    assert ("", "secrets") not in controllers and ("", "pods") not in controllers
    subjects = [s for d in docs if d["kind"].endswith("Binding") for s in d["subjects"]]
    assert {(s["kind"], s["namespace"]) for s in subjects} == {("ServiceAccount",
                                                                 "tabby-system")}


# -- the workloads --------------------------------------------------------------------------

def test_the_daemonset_runs_everywhere_with_what_the_agent_needs() -> None:
    opts = Options.create()
    ds = manifests.daemonset(opts)
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == "tabby-node"
    (init,), (agent,) = spec["initContainers"], spec["containers"]
    assert init["args"] == ["install-cni", "--bin-dir", "/opt/cni/bin", "--conf-dir",
                            "/etc/cni/net.d", "--mtu", "$(TABBY_MTU)", "--cni-socket",
                            "/run/tabby/cni.sock", "--node", "$(NODENAME)"]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/opt/cni/bin", "/etc/cni/net.d"}
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent["image"] == f"localhost/tabby:{__import__('tabby').__version__}"
    assert agent["imagePullPolicy"] == "IfNotPresent"
    host, port = DEFAULT_METRICS_ADDR.split(":")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"host": host, "port": int(port), "path": "/healthz"}
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODENAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert (env["TABBY_IP"]["value"], env["TABBY_IP_AUTODETECTION_METHOD"]["value"],
            env["TABBY_IP6"]["value"]) == ("autodetect", "first-found", "none")
    paths = {v["hostPath"]["path"] for v in spec["volumes"]}
    assert paths == {"/run/tabby", "/var/run/netns", "/opt/cni/bin", "/etc/cni/net.d"}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert mounts["/var/run/netns"]["readOnly"] is True


def test_options_shape_config_pools_and_env() -> None:
    opts = Options.create(["fd7a:bb1e:9::/48", "10.244.0.0/16"], "None")
    assert (opts.mtu, opts.bgp, [str(p) for p in opts.pools]) == (
        1500, "bird", ["10.244.0.0/16", "fd7a:bb1e:9::/48"])
    data = manifests.config_map(opts)["data"]
    assert (data["pool_cidrs"], data["bgp"], data["mtu"]) == (
        "10.244.0.0/16,fd7a:bb1e:9::/48", "bird", "1500")
    conflist = yaml.safe_load(data["cni_network_config"])
    assert conflist["plugins"][0] == {"type": "tabby-cni", "socket": "/run/tabby/cni.sock",
                                      "mtu": 1500}
    assert [(p["metadata"]["name"], p["spec"]["vxlanMode"], p["spec"]["blockSize"])
            for p in manifests.pools(opts)] == [("default-ipv4-ippool", "Never", 26),
                                                ("default-ipv6-ippool", "Never", 122)]
    env = {e["name"]: e.get("value") for e in manifests.agent_env(opts)}
    assert env["TABBY_IP6"] == "autodetect" and env["TABBY_IP6_AUTODETECTION_METHOD"]
    vx = Options.create(encapsulation="VXLANCrossSubnet", image="reg.example/tabby:1")
    assert (vx.mtu, vx.bgp, manifests.pools(vx)[0]["spec"]["vxlanMode"]) == (
        1450, "none", "CrossSubnet")
    assert manifests.daemonset(vx)["spec"]["template"]["spec"]["containers"][0]["image"] \
        == "reg.example/tabby:1"


@pytest.mark.parametrize(("argv", "message"), [
    (["--pool-cidr", "10.0.0.1/16"], "--pool-cidr 10.0.0.1/16: 10.0.0.1/16 has host bits set"),
    (["--pool-cidr", "10.0.0.0/16", "10.1.0.0/16"],
     "--pool-cidr 10.1.0.0/16: an IPv4 pool is given already (10.0.0.0/16)"),
    (["--pool-cidr", "10.0.0.0/28"], "--pool-cidr 10.0.0.0/28: smaller than one block (/26)"),
    (["--pool-cidr", "nonsense"], "--pool-cidr nonsense:"),
    (["--mtu", "40"], "--mtu 40: must be within 68..65535"),
])
def test_bad_options_get_one_line_and_exit_1(capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "manifests", *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_a_bad_encapsulation_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["manifests", "--encapsulation", "IPIP"])
    assert info.value.code == 2
    assert "invalid choice: 'IPIP'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--bgp maybe: one of bird, none"):
        Options.create(bgp="maybe")


def test_token_kubeconfig_is_private_and_loads(tmp_path: Path) -> None:
    from tabby.store.kubernetes import api_client
    (tmp_path / "ca.crt").write_text("")
    path = cluster.write_token_kubeconfig(tmp_path / "k" / "agent.kubeconfig",
                                          "https://127.0.0.1:6443", tmp_path / "ca.crt",
                                          "tok3n", cluster.account_user("tabby-node"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    client = api_client(str(path))
    assert client.configuration.api_key["BearerToken"] == "Bearer tok3n"
    assert cluster.account_user("tabby-node") == "system:serviceaccount:tabby-system:tabby-node"


# -- a container as the lab runs it -----------------------------------------------------------

def test_expand_follows_the_kubelet() -> None:
    env = {"A": "1", "B": "x y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)-$$", env) == "1-x y-$(C)-$(A)-$"


def test_container_process_resolves_env_args_and_host_paths() -> None:
    template = {"spec": {
        "serviceAccountName": "sa",
        "volumes": [{"name": "run", "hostPath": {"path": "/run/tabby"}},
                    {"name": "ns", "hostPath": {"path": "/var/run/netns"}},
                    {"name": "cfg", "configMap": {"name": "c"}}],
        "containers": [{"name": "main", "command": ["tabby"],
                        "args": ["agent", "--node", "$(NODE)", "--sock", "/run/tabby/cni.sock",
                                 "--bird", "/run/tabby/bird", "--ns", "/var/run/netns",
                                 "--mtu", "$(MTU)", "/etc/other"],
                        "env": [{"name": "NODE", "valueFrom": {"fieldRef": {
                                    "fieldPath": "spec.nodeName"}}},
                                {"name": "MTU", "valueFrom": {"configMapKeyRef": {
                                    "name": "c", "key": "mtu"}}},
                                {"name": "GONE", "valueFrom": {"configMapKeyRef": {
                                    "name": "c", "key": "nope", "optional": True}}},
                                {"name": "WHO", "value": "$(NODE)@$(NS)"},
                                {"name": "NS", "valueFrom": {"fieldRef": {
                                    "fieldPath": "metadata.namespace"}}}],
                        "volumeMounts": [{"name": "run", "mountPath": "/run/tabby"},
                                         {"name": "ns", "mountPath": "/var/run/netns"},
                                         {"name": "cfg", "mountPath": "/etc/cfg"}]}]}}
    proc = container_process(template, "main", node="n1", namespace="tabby-system",
                             config_maps={"c": {"mtu": "1400"}},
                             host_dirs={"/run/tabby": "/lab/n1", "/run/tabby/bird": "/lab/n1/bgp"})
    assert proc.argv == ("tabby", "agent", "--node", "n1", "--sock", "/lab/n1/cni.sock",
                         "--bird", "/lab/n1/bgp", "--ns", "/var/run/netns", "--mtu", "1400",
                         "/etc/other")
    assert dict(proc.env) == {"NODE": "n1", "MTU": "1400", "WHO": "n1@$(NS)",
                              "NS": "tabby-system"}


@pytest.mark.parametrize(("env", "message"), [
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
     "container 'main' env X: ConfigMap 'c' has no key 'k'"),
    ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
     "container 'main' env X: fieldRef status.podIP is not supported here"),
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
     "container 'main' env X: secretKeyRef is not supported here"),
])
def test_container_process_names_what_it_cannot_do(env: dict[str, Any], message: str) -> None:
    template = {"spec": {"containers": [{"name": "main", "command": ["x"], "env": [env]}]}}
    with pytest.raises(LabError, match=message.replace("(", r"\(")):
        container_process(template, "main", node="n", namespace="ns", config_maps={},
                          host_dirs={})
    with pytest.raises(LabError, match="no container 'other'"):
        container_process(template, "other", node="n", namespace="ns", config_maps={},
                          host_dirs={})


def test_the_lab_starts_agents_and_controllers_from_the_manifest(tmp_path: Path) -> None:
    t = plan("trbu", nodes=2, stack="dual", bgp="mesh", datastore="kubernetes")
    nodes = tuple(NodeRecord(n.name, n.netns, tmp_path / n.name) for n in t.nodes)
    state = LabState(name="trbu", dir=tmp_path, phase="up", options=t.options(),
                     datastore="kubernetes:///admin", nodes=nodes)
    argv = manifest_argv(state, "DaemonSet", "kubernetes:///agent.kubeconfig", nodes[1])
    assert argv[0] == "env"
    env = dict(a.split("=", 1) for a in argv[1:] if "=" in a and not a.startswith("-"))
    assert env["TABBY_DATASTORE"] == "kubernetes:///agent.kubeconfig"
    assert (env["NODENAME"], env["TABBY_IP"], env["TABBY_IP6"]) == (
        "node-2", "autodetect", "autodetect")
    command = argv[argv.index("agent") - 1:]
    assert command[command.index("--node") + 1] == "node-2"
    assert command[command.index("--cni-socket") + 1] == str(nodes[1].cni_socket)
    assert command[command.index("--bgp") + 1] == "bird"
    assert command[command.index("--bgp-dir") + 1] == str(tmp_path / "node-2" / "bgp")
    assert command[command.index("--mtu") + 1] == str(t.mtu)
    assert command[command.index("--metrics-addr") + 1] == DEFAULT_METRICS_ADDR
    host_ip = str(t.nodes[1].addresses()[0].ip)  # status.hostIP: the node's first address
    assert env["TABBY_HOST_IP"] == host_ip
    assert command[command.index("--flows-addr") + 1] == f"{host_ip}:9097"
    controllers = manifest_argv(state, "Deployment", "kubernetes:///c.kubeconfig")
    assert controllers[1] == "TABBY_DATASTORE=kubernetes:///c.kubeconfig"
    assert controllers[-1] == "controllers"

"""The lab's kubelet stand-in: plays a kubelet's part towards a real kube-apiserver.

It is NOT a kubelet. It runs no containers and pulls no images. Each pod the
scheduler binds to its node gets what the lab gives any pod (as for pods
applied with ``tabby apply``): a network namespace ``<lab>_<ns>_<pod>``, wired
through the node's CNI conflist (tabby-cni, then portmap) exactly as a
container runtime would, and one listener process answering TCP and UDP on the
pod's declared container ports. Then the pod's status says Running and Ready.
``hostNetwork`` pods get no namespace, no CNI and no listener (their ports
could collide in the node's namespace): they are only marked Running with the
node's addresses.

    python -m tabby.lab.kubelet --lab NAME --node NODE --kubeconfig PATH

runs in the root namespace (it reaches the API server on 127.0.0.1 and runs
CNI inside the node's namespace, as the lab's runtime does) and logs to
stderr. The kubeconfig's identity is ``system:node:<node>`` in group
``system:nodes``: with the Node authorizer and NodeRestriction it has exactly
a kubelet's rights.

    register   Node <node> created (or updated if it exists): labels, addresses
               (the node's fabric addresses, every family of the lab), capacity,
               nodeInfo, Ready=True
    heartbeat  Lease kube-node-lease/<node> renewed every 10 s, Node status every 30 s
    pods       list+watch pods with spec.nodeName=<node> (resumed from the last
               resourceVersion, relisted on 410 Gone) into a cache; each event
               queues the pod's key; 4 workers take keys, one key never on two
               workers at once, and make the lab match the cache (``sync``)

    API server ──watch──> cache ──key──> WorkQueue ──> sync(key)
                                           │ wiring.wire / release (CNI, netns, listener)
                                           │ PodRecord in the lab's state.json
                                           └> pods/status, Events, DELETE (grace 0)

Modules: ``documents`` (pure: the Node, Lease and pod status it writes),
``api`` (the seams: the API calls as JSON, the keyed work queue), ``daemon``
(the loops and ``sync``), ``__main__`` (the command line), ``containers``
(pure: a pod template's container as a process, how the lab starts tabby's own
DaemonSet and Deployment from its manifests). The pod plumbing is
``tabby.lab.wiring``, shared with ``tabby apply``'s pod driver.

``sync`` is level-triggered: a record whose pod is gone (or has another uid)
is torn down (CNI DEL, listener stopped, netns deleted, a second DEL with an
empty netns as a CRI runtime sends, record removed); a terminating pod is torn
down, then deleted with gracePeriodSeconds=0 and a uid precondition; a pod
without a record is wired and its status written; a wired pod whose status
does not say so gets it rewritten. A failed CNI ADD is undone, reported as a
FailedCreatePodSandBox Event, and retried with backoff. On start, every pod
bound here and every record of this node is synced: what runs is adopted,
not re-wired. SIGTERM stops watching and exits, leaving pods as they are.

The API server is the truth for the node's pods: a record of this node whose
pod the API server does not have is torn down. Run it in labs whose pods live
in the API server, not beside ``tabby apply`` pods on a SQLite or etcd store.
"""

from tabby.lab.kubelet.api import KubeApi, WorkQueue
from tabby.lab.kubelet.daemon import Kubelet

__all__ = ["KubeApi", "Kubelet", "WorkQueue"]

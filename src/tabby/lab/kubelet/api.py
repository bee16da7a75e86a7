"""The stand-in's two seams: the API calls a kubelet makes, and a keyed work queue.

``KubeApi`` wraps the official client (its kubeconfig handling and TLS): JSON
dicts in and out (``_preload_content=False``), and the API server's refusals
turned into tabby's error tree by the Kubernetes store's own mapping
(``tabby.store.kubeapi.error_for``: 404 NotFound, 409 Conflict, 410
Compacted, 403 Forbidden, ...), with no answer or a 5xx as Unavailable, each
naming the call and the server's message.

``WorkQueue`` is client-go's workqueue in small: a key added while queued is
queued once; a key added while a worker holds it is queued again only when
that worker is done, so one pod is never handled by two workers at once.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.watch.watch import iter_resp_lines

from tabby.errors import ConfigError, TabbyError, Unavailable
from tabby.kube.binaries import KUBERNETES_VERSION
from tabby.lab.kubelet.documents import LEASE_NAMESPACE, Json, Key
from tabby.store.kubeapi import APIError, error_for

__all__ = ["KubeApi", "WorkQueue"]

REQUEST_TIMEOUT = 30.0
WATCH_SECONDS = 300
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
# The API server names a request's field manager after the user agent's first word.
USER_AGENT = f"kubelet/{KUBERNETES_VERSION} (tabby lab stand-in)"


class KubeApi:
    def __init__(self, kubeconfig: Path) -> None:
        try:
            api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig))
        except (k8s_config.ConfigException, OSError) as exc:
            raise ConfigError(f"kubeconfig {kubeconfig}: {exc}; pass the node's kubeconfig"
                              " (system:node:<node> in group system:nodes)") from exc
        api.user_agent = USER_AGENT
        self.core = k8s.CoreV1Api(api)
        self.coord = k8s.CoordinationV1Api(api)

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        try:
            return method(*args, _preload_content=False, **kwargs)
        except k8s.ApiException as exc:
            raise api_error(what, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"{what}: the API server did not answer ({exc})") from exc

    def _json(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Json:
        data: Json = json.loads(self._call(what, method, *args, **kwargs).data)
        return data

    # -- the node and its lease ---------------------------------------------------

    def create_node(self, body: Json) -> Json:
        return self._json(f"create node {body['metadata']['name']}", self.core.create_node, body)

    def patch_node(self, name: str, body: Json) -> Json:
        return self._json(f"patch node {name}", self.core.patch_node, name, body,
                          _content_type=SMP)

    def patch_node_status(self, name: str, status: Json) -> Json:
        return self._json(f"update node {name}'s status", self.core.patch_node_status, name,
                          {"status": status}, _content_type=MERGE)

    def get_lease(self, name: str) -> Json:
        return self._json(f"read lease {LEASE_NAMESPACE}/{name}",
                          self.coord.read_namespaced_lease, name, LEASE_NAMESPACE)

    def create_lease(self, body: Json) -> Json:
        return self._json(f"create lease {LEASE_NAMESPACE}/{body['metadata']['name']}",
                          self.coord.create_namespaced_lease, LEASE_NAMESPACE, body)

    def replace_lease(self, body: Json) -> Json:
        name = body["metadata"]["name"]
        return self._json(f"renew lease {LEASE_NAMESPACE}/{name}",
                          self.coord.replace_namespaced_lease, name, LEASE_NAMESPACE, body)

    # -- pods -------------------------------------------------------------------------

    def list_pods(self, node: str) -> Json:
        return self._json(f"list pods of {node}", self.core.list_pod_for_all_namespaces,
                          field_selector=f"spec.nodeName={node}")

    def watch_pods(self, node: str, resource_version: str) -> Iterator[Json]:
        """Watch events from ``resource_version`` on, bookmarks included, until the server
        ends the stream (after about WATCH_SECONDS). An ERROR event is raised as its error."""
        resp = self._call(f"watch pods of {node}", self.core.list_pod_for_all_namespaces,
                          field_selector=f"spec.nodeName={node}", watch=True,
                          resource_version=resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=WATCH_SECONDS,
                          _request_timeout=(REQUEST_TIMEOUT, WATCH_SECONDS + REQUEST_TIMEOUT))
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event: Json = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise status_error(f"watch pods of {node}", int(status.get("code") or 0),
                                       json.dumps(status))
                yield event
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"watch pods of {node}: the stream broke ({exc})") from exc
        finally:
            resp.release_conn()

    def patch_pod_status(self, namespace: str, name: str, body: Json) -> Json:
        return self._json(f"update pod {namespace}/{name}'s status",
                          self.core.patch_namespaced_pod_status, name, namespace, body,
                          _content_type=SMP)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete at once (grace 0), only if the pod is still the one with ``uid``."""
        options = k8s.V1DeleteOptions(grace_period_seconds=0,
                                      preconditions=k8s.V1Preconditions(uid=uid))
        self._call(f"delete pod {namespace}/{name}", self.core.delete_namespaced_pod, name,
                   namespace, body=options)

    def create_event(self, namespace: str, body: Json) -> Json:
        return self._json(f"post an event in {namespace}", self.core.create_namespaced_event,
                          namespace, body)


def api_error(what: str, exc: k8s.ApiException) -> TabbyError:
    return status_error(what, int(exc.status or 0), exc.body or exc.reason or "")


def status_error(what: str, code: int, body: bytes | str) -> TabbyError:
    """The store's mapping of API answers (``error_for``), and for a kubelet no answer
    or a 5xx is Unavailable: it retries those with backoff."""
    error = error_for(code, body, what)
    if isinstance(error, APIError) and (code == 0 or code >= 500):
        return Unavailable(str(error))
    return error


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Key] = deque()
        self._dirty: set[Key] = set()
        self._processing: set[Key] = set()
        self._closed = False

    def add(self, key: Key) -> None:
        with self._cond:
            if self._closed or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._cond.notify()

    def add_after(self, key: Key, delay: float) -> None:
        timer = threading.Timer(delay, self.add, (key,))
        timer.daemon = True
        timer.start()

    def get(self) -> Key | None:
        """The next key, held until ``done``; None once the queue is shut down."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            key = self._queue.popleft()
            self._processing.add(key)
            self._dirty.discard(key)
            return key

    def done(self, key: Key) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

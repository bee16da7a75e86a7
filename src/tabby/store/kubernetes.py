"""The Kubernetes API as a tabby Store (Calico's "Kubernetes datastore" mode).

    kubernetes:///path/to/kubeconfig      a kubeconfig file
    kubernetes://                         in-cluster: the pod's service account

Each store resource is an API resource (``tabby.store.kuberesources``): Kubernetes'
own kinds as the API server serves them, tabby's kinds as custom resources
(``manifests/crds.yaml``). The official ``kubernetes`` client does the
configuration, authentication, TLS and connection pooling; objects travel as
plain JSON (``_preload_content=False``), never through the client's models.

How the contract maps (see ``tabby.store.base``):

- revision = ``metadata.resourceVersion``. With one etcd behind the API
  server it is etcd's revision, so revisions of all resources share one
  increasing counter, as the contract wants; but the cluster's own writers
  (leases, events, controllers) advance it too, so "+1 per write" holds only
  for stores tabby has to itself. ``revision()`` reads it from a one-item list.
- create = POST, update = PUT carrying the expected ``resourceVersion`` (the
  API server's optimistic concurrency is the compare-and-swap), delete = DELETE
  with a ``resourceVersion`` precondition. 409 is ``Conflict``, 404
  ``NotFound``, 422 a ``ValidationError`` naming the API server's field paths,
  401/403 ``Forbidden`` with the server's message (verb, resource, user).
  Writes ask for ``fieldValidation=Strict``: a field the schema lacks is an
  error, never silently pruned.
- Values are the objects as served, less ``managedFields``,
  ``resourceVersion`` (it is the item's revision) and ``generation``.
  On write, ``apiVersion``, ``kind``, name and namespace come from the key.
  ``create_revision`` is not served by Kubernetes: items carry 0.
- A resource kept to one namespace (``APIResource.namespace``: Secrets, in
  ``tabby-system``) is listed and watched in that namespace only; other
  namespaces hold nothing of it (reads find nothing, writes are refused).
- ``update_status`` writes through the status subresource (a Pod's or
  Service's status; the main resource ignores status there).
- ``watch`` is one list-less watch stream per resource (``tabby.store.kubewatch``):
  from ``start_revision - 1`` (Kubernetes watches after an RV), with bookmarks,
  resumed from the last RV seen when a stream ends or breaks, ``Compacted``
  on 410 Gone (the caller lists again). Events of one resource arrive in
  revision order; across resources in arrival order.

Transport failures (connection refused or reset, 429, 5xx) are retried with
backoff up to ``op_timeout``, then raise ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.config.config_exception import ConfigException

from tabby.errors import (
    ConfigError,
    Conflict,
    NotFound,
    StoreError,
    Unavailable,
)
from tabby.store.base import Item, Key, ListResult, Store, Value, Watch
from tabby.store.kubeapi import (
    APIError,
    Json,
    body_of,
    describe,
    error_for,
    item_of,
    key_of,
    never_sent,
)
from tabby.store.kuberesources import APIResource, default_resources
from tabby.store.kubewatch import KubernetesWatch

__all__ = ["APIError", "KubernetesStore", "api_client"]

T = TypeVar("T")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def api_client(kubeconfig: str | None, *, pool_size: int = 64) -> kclient.ApiClient:
    """An ApiClient from a kubeconfig file, or from the in-cluster service account."""
    configuration = kclient.Configuration()
    try:
        if kubeconfig:
            kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration)
        else:
            kconfig.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
    except (ConfigException, OSError, ValueError, TypeError) as e:
        where = kubeconfig or "the in-cluster service account"
        raise ConfigError(f"kubernetes datastore: cannot load {where}: {e}") from e
    configuration.connection_pool_maxsize = pool_size
    configuration.retries = False  # we retry ourselves, knowing which requests may repeat
    return kclient.ApiClient(configuration)


class KubernetesStore(Store):
    def __init__(self, kubeconfig: str | None, *,
                 resources: Mapping[str, APIResource] | None = None,
                 request_timeout: float = 10.0, op_timeout: float = 15.0,
                 watch_timeout: int = 300, page_size: int = 500) -> None:
        self.kubeconfig = kubeconfig
        self.url = f"kubernetes://{kubeconfig or ''}"
        self.resources = dict(resources if resources is not None else default_resources())
        self.request_timeout = request_timeout
        self.op_timeout = op_timeout
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        # True: every write is sent with dryRun=All (checked by the API server, not
        # persisted): `tabby apply --dry-run=server` (tabby.store.dryrun).
        self.dry_run = False
        self.api = api_client(kubeconfig)
        self._lock = threading.Lock()
        self._watches: list[Watch] = []
        self._closed = False

    # -- requests ---------------------------------------------------------------------

    def resource(self, name: str) -> APIResource:
        try:
            return self.resources[name]
        except KeyError:
            raise StoreError(f"kubernetes datastore: no API resource for {name!r}"
                             f" (known: {', '.join(sorted(self.resources))})") from None

    def _kept(self, key: Key) -> APIResource:
        """The resource of ``key`` for a write; StoreError if its namespace is not kept."""
        res = self.resource(key.resource)
        if not res.holds(key.namespace):
            raise StoreError(f"kubernetes datastore: {key.resource} are kept in namespace"
                             f" {res.namespace} only, not in {key.namespace!r}")
        return res

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                body: Json | None = None, what: str = "") -> Json:
        """One API call, returning the decoded JSON body; errors mapped to the tree."""
        def once() -> Json:
            resp = self.send(method, path, query=query, body=body,
                             timeout=(self.request_timeout, self.request_timeout))
            data = resp.read()
            if not 200 <= resp.status < 300:
                raise error_for(resp.status, data, what or f"{method} {path}")
            doc: Json = json.loads(data) if data else {}
            return doc
        return self._retrying(what or f"{method} {path}", once, idempotent=method == "GET")

    def send(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
             body: Json | None = None, timeout: tuple[float, float] | None = None,
             ) -> Any:
        """The raw response of one request (streaming: read it or close it)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        method, url, headers, body_out, _ = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers,
            body=body, auth_settings=["BearerToken"])
        try:
            return self.api.call_api(method, url, header_params=headers, body=body_out,
                                     _request_timeout=timeout)
        except kclient.ApiException as e:
            # The client turns a TLS failure into ApiException(status=0): an API server
            # gone mid-handshake (a relay or load balancer in front of it still accepts
            # the connection). That is the transport failing, like a refused connection.
            if e.status:
                raise
            raise urllib3.exceptions.ProtocolError(
                " ".join(str(e.reason or e).split())) from e

    def _retrying(self, what: str, fn: Callable[[], T], *, idempotent: bool) -> T:
        deadline = time.monotonic() + self.op_timeout
        delay = 0.1
        while True:
            try:
                return fn()
            except APIError as e:
                if e.status not in RETRY_STATUS or time.monotonic() + delay > deadline:
                    raise
                last = str(e)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if not (idempotent or never_sent(e)) or time.monotonic() + delay > deadline:
                    raise Unavailable(f"kubernetes datastore: {what}: {describe(e)}; is the"
                                      " API server up?") from e
                last = describe(e)
            if self._closed:
                raise Unavailable(f"kubernetes datastore: {what}: closed ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- reads ------------------------------------------------------------------------

    def get(self, key: Key) -> Item:
        res = self.resource(key.resource)
        if not res.holds(key.namespace):
            raise NotFound(f"{key}: {key.resource} are kept in namespace {res.namespace} only")
        obj = self.request("GET", res.item(key.namespace, key.name), what=f"get {key}")
        return item_of(key, obj)

    def list(self, resource: str, namespace: str | None = None, prefix: str = "") -> ListResult:
        res = self.resources.get(resource)
        if res is None or (namespace and not res.namespaced) or not res.holds(namespace):
            return ListResult((), self.revision())  # nothing can be stored there
        items: list[Item] = []
        query = {"limit": str(self.page_size)}
        revision = 0
        while True:
            try:
                doc = self.request("GET", res.collection(namespace), query=query,
                                   what=f"list {resource}")
            except NotFound as e:
                raise StoreError(f"the API server does not serve {resource}"
                                 f" ({res.api_version} {res.plural}); for tabby's own kinds"
                                 " apply manifests/crds.yaml") from e
            meta = doc.get("metadata") or {}
            revision = revision or int(meta.get("resourceVersion") or 0)
            for obj in doc.get("items") or []:
                # A list's items carry no apiVersion and kind of their own.
                obj.setdefault("apiVersion", res.api_version)
                obj.setdefault("kind", res.kind)
                key = key_of(resource, obj)
                if namespace is not None and key.namespace != namespace:
                    continue
                if key.name.startswith(prefix):
                    items.append(item_of(key, obj))
            token = meta.get("continue")
            if not token:
                break
            query = {"limit": str(self.page_size), "continue": str(token)}
        return ListResult(tuple(sorted(items, key=lambda i: i.key)), revision)

    def revision(self) -> int:
        doc = self.request("GET", "/api/v1/namespaces", query={"limit": "1"}, what="revision")
        return int((doc.get("metadata") or {}).get("resourceVersion") or 0)

    # -- writes -----------------------------------------------------------------------

    def create(self, key: Key, value: Value) -> Item:
        res = self._kept(key)
        body = body_of(res, key, value)
        obj = self.request("POST", res.collection(key.namespace), body=body,
                           query=self._write_query(), what=f"create {key}")
        return item_of(key, obj)

    def _write_query(self) -> dict[str, str]:
        query = {"fieldValidation": "Strict"}
        if self.dry_run:
            query["dryRun"] = "All"
        return query

    def update(self, key: Key, value: Value, revision: int) -> Item:
        return self._put(key, value, revision, status=False)

    def update_status(self, key: Key, value: Value, revision: int) -> Item:
        """Write ``value``'s status through the status subresource (CAS as ``update``)."""
        return self._put(key, value, revision, status=self.resource(key.resource)
                         .status_subresource)

    def _put(self, key: Key, value: Value, revision: int, *, status: bool) -> Item:
        res = self._kept(key)
        body = body_of(res, key, value)
        body["metadata"]["resourceVersion"] = str(revision)
        path = res.item(key.namespace, key.name) + ("/status" if status else "")
        try:
            obj = self.request("PUT", path, body=body, query=self._write_query(),
                               what=f"update {key}")
        except APIError as e:
            if e.status == 400 and revision <= 0:  # "resourceVersion: Invalid value"
                self.get(key)  # NotFound if absent; else a stale revision
                raise Conflict(f"{key} changed (expected revision {revision})") from e
            raise
        return item_of(key, obj)

    def delete(self, key: Key, revision: int | None = None) -> Item:
        """DELETE with a resourceVersion precondition. The API server answers a custom
        resource's deletion with a Status, not the object: so the object is read
        first (its last value is what the contract returns) and deleted only if it
        is still that version, and the deletion's revision is reported as the
        lowest it can be, the last write's + 1 (etcd's real one may be higher if
        other writers came between: a watch's DELETE event carries it)."""
        res = self._kept(key)
        for _ in range(10):
            current = self.get(key)
            if revision is not None and current.revision != revision:
                raise Conflict(f"{key} changed (revision {current.revision}, expected"
                               f" {revision})")
            options: Json = {"kind": "DeleteOptions", "apiVersion": "v1",
                             "preconditions": {"resourceVersion": str(current.revision)}}
            try:
                obj = self.request("DELETE", res.item(key.namespace, key.name), body=options,
                                   query={"dryRun": "All"} if self.dry_run else None,
                                   what=f"delete {key}")
            except Conflict:
                if revision is not None:
                    raise
                continue  # it moved between our read and the delete: read again
            if obj.get("kind") == "Status":
                return Item(key, current.value, current.revision + 1, 0)
            return item_of(key, obj)
        raise Conflict(f"{key}: kept changing under us; try again")

    # -- watch ------------------------------------------------------------------------

    def watch(self, resource: str | None, start_revision: int) -> Watch:
        return self.watch_many(sorted(self.resources) if resource is None else [resource],
                               start_revision)

    def watch_many(self, resources: Iterable[str], start_revision: int) -> Watch:
        names = sorted(set(resources))
        w = KubernetesWatch(self, [(n, self.resource(n)) for n in names], start_revision)
        with self._lock:
            self._watches = [x for x in self._watches if not getattr(x, "closed", False)]
            self._watches.append(w)
        return w

    def close(self) -> None:
        self._closed = True
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.close()
        with contextlib.suppress(Exception):
            self.api.close()  # type: ignore[no-untyped-call]

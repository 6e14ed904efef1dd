"""Live workload inventory: list and watch pods through the Kubernetes API.

Needs RBAC get/list/watch on pods (see docs/stream.md). The watch resumes from
the last resourceVersion it saw and re-lists when the API answers 410 Gone.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson

from pipeline.stream.inventory import WorkloadInventory

log = logging.getLogger(__name__)


def api_client(host: str = ""):
    """A Kubernetes API client: in-cluster service account, else kubeconfig, else ``host``."""
    from kubernetes import client, config

    if host:
        configuration = client.Configuration()
        configuration.host = host
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class KubernetesInventoryWatcher:
    """Keeps a :class:`WorkloadInventory` current from the pod list/watch API, in a daemon thread."""

    def __init__(self, inventory: WorkloadInventory, client=None, host: str = "", timeout_seconds: int = 300) -> None:
        self.inventory = inventory
        self._client = client
        self._host = host
        self.timeout_seconds = timeout_seconds
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0

    def start(self) -> KubernetesInventoryWatcher:
        self._thread = threading.Thread(target=self._run, name="inventory-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        api = client.CoreV1Api(self._client or api_client(self._host))
        backoff = 1.0
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    listed = api.list_pod_for_all_namespaces(_preload_content=False)
                    doc = orjson.loads(listed.data)
                    self.inventory.add_pods(doc.get("items") or [])
                    version = (doc.get("metadata") or {}).get("resourceVersion", "")
                    self.synced.set()
                    log.info("inventory: %d workloads from the Kubernetes API", len(self.inventory))
                stream = watch.Watch().stream(api.list_pod_for_all_namespaces, resource_version=version,
                                              timeout_seconds=self.timeout_seconds, allow_watch_bookmarks=True)
                for event in stream:
                    if self._stop.is_set():
                        return
                    kind, obj = event.get("type"), event.get("raw_object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion", version)
                    if kind in ("ADDED", "MODIFIED"):
                        self.inventory.add_pods([obj])
                    elif kind == "DELETED":
                        self.inventory.remove_pod(obj)
                    elif kind == "ERROR" and (obj.get("code") == 410):
                        version = ""
                        break
                    self.events += 1
                backoff = 1.0
            except ApiException as exc:
                if exc.status == 410:
                    version = ""
                    continue
                log.warning("inventory watch failed (%s); retrying in %.0fs", exc.reason, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
            except Exception as exc:  # network errors: keep the last inventory and retry
                log.warning("inventory watch failed (%s); retrying in %.0fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
            time.sleep(0)

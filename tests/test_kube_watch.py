"""Live inventory from the Kubernetes API: list, then watch added and deleted pods (a local API server)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline.stream.inventory import WorkloadInventory
from pipeline.stream.kube import KubernetesInventoryWatcher


def _pod(name: str, ip: str, image: str, rv: str) -> dict:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name.rsplit("-", 1)[0], "uid": "u-" + rv, "controller": True}
    meta = {"name": name, "namespace": "genai", "resourceVersion": rv, "labels": {"pod-template-hash": "6b7c9d8f5b"},
            "ownerReferences": [owner]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": image}]}, "status": {"podIP": ip}}


OLD = _pod("tgi-6b7c9d8f5b-aaaaa", "10.244.0.5", "ghcr.io/huggingface/text-generation-inference:2", "10")
NEW = _pod("vllm-6b7c9d8f5b-bbbbb", "10.244.0.9", "vllm/vllm-openai:v0.6", "11")


class FakeAPI(BaseHTTPRequestHandler):
    watches: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/api/v1/pods"):
            self.send_error(404)
            return
        if "watch=true" in self.path or "watch=True" in self.path:
            FakeAPI.watches.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = [{"type": "ADDED", "object": NEW}, {"type": "DELETED", "object": OLD}] if len(FakeAPI.watches) == 1 else []
            for event in events:
                line = (json.dumps(event) + "\n").encode()
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            time.sleep(0.5)
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:  # the client may already have closed a finished watch
                pass
            return
        body = json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": [OLD]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_watch_lists_then_follows_additions_and_deletions() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    inventory = WorkloadInventory()
    watcher = KubernetesInventoryWatcher(inventory, host=f"http://127.0.0.1:{server.server_port}", timeout_seconds=1).start()
    try:
        assert watcher.synced.wait(10)
        deadline = time.monotonic() + 10
        while inventory.pod_for_ip("10.244.0.9") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inventory.pod_for_ip("10.244.0.9").workload == "genai/vllm"
        while inventory.pod_for_ip("10.244.0.5") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inventory.pod_for_ip("10.244.0.5") is None, "a deleted pod's address is forgotten"
        assert inventory.workload("genai/tgi") is not None and "vllm/vllm-openai:v0.6" in inventory.workload("genai/vllm").images
        assert "resourceVersion=10" in FakeAPI.watches[0], "the watch resumes from the listed version"
    finally:
        watcher.stop()
        server.shutdown()

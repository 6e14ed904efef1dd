"""Deployment files, checked offline: Dockerfile, docker-compose.yml, deploy/kubernetes/, the Grafana dashboard.

No Docker engine or cluster runs here, so the files are checked against what they must agree with: the CLI
(`python -m pipeline.cli --help` and each verb's options), the settings of pipeline.config.Settings, the
topics of pipeline.topics, the metrics defined in the code, and the Kubernetes OpenAPI schemas shipped by
kubernetes-validate (through jobs.policy.validate).
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import importlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from jobs.policy.validate import PolicyValidationError, validate_object
from pipeline import topics
from pipeline.config import ENV_PREFIX, Settings, load_settings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "flowctl-dashboard.json"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

SETTINGS = {f.name for f in fields(Settings)} - {"extra"}
LONG_RUNNING = {"always", "unless-stopped"}


# ---- the CLI ------------------------------------------------------------------------------------


@functools.cache
def cli_verbs() -> frozenset[str]:
    """Verbs that `flowctl --help` lists (the real CLI in a subprocess)."""
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr
    commands = out.stdout.split("Commands", 1)[1]
    return frozenset(re.findall(r"^\W+([a-z][a-z-]*)\s{2,}", commands, flags=re.M))


@functools.cache
def click_app():
    import typer

    from pipeline.cli import app

    return typer.main.get_command(app)


def command_for(words: list[str]):
    """The click command a `flowctl WORDS…` invocation runs, and the words after it."""
    cmd, rest = click_app(), list(words)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        assert rest[0] in cmd.commands, f"flowctl has no command {rest[0]!r}"
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, rest


def check_invocation(words: list[str]) -> str:
    """Assert that `flowctl WORDS…` names a listed verb with options it has; return the verb path."""
    assert words and words[0] in cli_verbs(), f"`flowctl {' '.join(words)}`: {words[:1]} is not a verb `flowctl --help` lists"
    cmd, rest = command_for(words)
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"`flowctl {' '.join(words)}`: {cmd.name} has no option {word}"
    return " ".join(words[: len(words) - len(rest)])


def flowctl_invocations(entrypoint: list[str] | None, command: list[str] | str | None) -> list[list[str]]:
    """The flowctl command lines a container runs: the image's `flowctl` entrypoint, or `flowctl …` in a shell script."""
    if isinstance(command, str):
        command = shlex.split(command)
    command = list(command or [])
    if entrypoint in (None, ["flowctl"]):
        return [command]
    assert entrypoint[:2] in (["/bin/sh", "-c"], ["sh", "-c"]), f"unexpected entrypoint {entrypoint}"
    script = "\n".join(command)
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        for match in re.finditer(r"\bflowctl((?:\s+[^\s;&|)]+)+)", line):
            words = [w.strip("\"'") for w in match.group(1).split()]
            found.append(words)
    return found


@functools.cache
def verb_serves_metrics(verb: str) -> bool:
    """Whether a verb starts the Prometheus endpoint: its callback, or a module it imports, calls metrics.serve()."""
    cmd, _ = command_for(verb.split())
    callback = inspect.unwrap(cmd.callback)
    sources = [inspect.getsource(callback)]
    for module in re.findall(r"from ([\w.]+) import", sources[0]):
        spec = importlib.util.find_spec(module)
        if spec and spec.origin and spec.origin.endswith(".py"):
            sources.append(Path(spec.origin).read_text())
    return any("metrics.serve(" in s for s in sources)


# Verbs that serve /metrics only when they keep running: `detect` once, as a CronJob, does not.
METRICS_ONLY_WITH = {"detect": "--interval"}


def invocation_serves_metrics(words: list[str]) -> bool:
    verb = check_invocation(words)
    needed = METRICS_ONLY_WITH.get(verb)
    return verb_serves_metrics(verb) and (needed is None or any(w.split("=")[0] == needed for w in words))


def check_settings_env(names: set[str], where: str) -> None:
    for name in names:
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            assert name[len(ENV_PREFIX):].lower() in SETTINGS, f"{where}: {name} is not a setting of pipeline.config.Settings"


def test_cli_verbs_are_read_from_the_real_help() -> None:
    assert {"agent", "worker", "sink", "detect", "recommend", "lake", "sql"} <= cli_verbs()


def test_invocation_check_rejects_unknown_verbs_and_options() -> None:
    with pytest.raises(AssertionError):
        check_invocation(["stream"])
    with pytest.raises(AssertionError):
        check_invocation(["recommend", "--interval", "1h"])
    assert check_invocation(["lake", "compact", "--min-age", "1h"]) == "lake compact"


def test_only_the_worker_serves_metrics_today() -> None:
    # Guards the static check itself: the worker's verb must be recognised as serving /metrics.
    assert verb_serves_metrics("worker")
    assert not verb_serves_metrics("recommend")
    assert invocation_serves_metrics(["detect", "--interval", "5m"])
    assert not invocation_serves_metrics(["detect", "--since", "-1h"])


# ---- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, arg = line.partition(" ")
            out.append((op.upper(), arg.strip()))
    return out


def test_dockerfile_builds_a_non_root_flowctl_image_from_the_source_tree() -> None:
    ins = dockerfile_instructions()
    assert all(arg.split()[0] == "python:3.11-slim" for op, arg in ins if op == "FROM")
    assert [arg for op, arg in ins if op == "ENTRYPOINT"] == ['["flowctl"]']
    assert "flowctl" in PYPROJECT["project"]["scripts"]
    user = [arg for op, arg in ins if op == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the project is installed with pip from the source tree"
    copied = {Path(arg.split()[0]).name for op, arg in ins if op == "COPY" and "--from" not in arg}
    copied |= {Path(p).name for op, arg in ins if op == "COPY" and "--from" not in arg for p in arg.split()[:-1]}
    wheel = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *wheel["packages"], *wheel.get("force-include", {})}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    ignored = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert not needed & ignored, f".dockerignore excludes files the build needs: {needed & ignored}"
    assert {".git", ".venv", "lake", ".flowctl"} <= ignored


def test_dockerfile_creates_the_volume_mount_points_owned_by_its_user() -> None:
    # Named volumes start as copies of the image's directory, owner included: a non-root process can only
    # write to them if the image created them for its user.
    runs = " ".join(arg for op, arg in dockerfile_instructions() if op == "RUN")
    targets = {m.split(":")[1] for s in compose()["services"].values() for m in s.get("volumes", [])
               if "build" in s and not m.startswith(("/", ".", "$"))}
    for target in targets:
        assert target in runs, f"the Dockerfile does not create {target}"
    assert re.search(r"chown -R \S+ /data", runs)


# ---- docker-compose.yml ---------------------------------------------------------------------------

COMPOSE_TOP_LEVEL = {"name", "services", "networks", "volumes", "configs", "secrets", "include"}
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, and $$ for a literal $."""
    def sub(m: re.Match) -> str:
        if m.group("dollar"):
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg")
        value = env.get(name)
        if op in (":-",) and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""
    return _VAR.sub(sub, text)


def compose_variables(text: str) -> set[str]:
    return {m.group("braced") or m.group("plain") for m in _VAR.finditer(text) if not m.group("dollar")}


@functools.cache
def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: tuple[tuple[str, str], ...] = ()) -> dict:
    """The compose file as Compose sees it: YAML anchors merged, variables interpolated."""
    def walk(node):
        if isinstance(node, str):
            return interpolate(node, dict(env))
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node
    return walk(copy.deepcopy(compose_raw()))


def flowctl_services(doc: dict) -> dict[str, dict]:
    return {name: s for name, s in doc["services"].items() if "build" in s}


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_top_level_is_compose_v2() -> None:
    doc = compose_raw()
    keys = {k for k in doc if not k.startswith("x-")}
    assert keys <= COMPOSE_TOP_LEVEL, f"not Compose v2 top-level keys: {keys - COMPOSE_TOP_LEVEL}"
    assert "version" not in doc  # obsolete in Compose v2
    assert {"kafka", "kafka-init", "agent", "worker", "sink", "detect", "recommend"} <= set(doc["services"])


def test_compose_variables_are_documented_in_the_header() -> None:
    text = COMPOSE.read_text()
    header = text.split("\nname:", 1)[0]
    for name in compose_variables(text.split("\nname:", 1)[1]):
        assert name in header, f"${{{name}}} is used but not described in the header comment"


def test_every_service_has_an_image_and_flowctl_services_build_this_repository() -> None:
    doc = compose()
    images = set()
    for name, service in doc["services"].items():
        assert service.get("image") or service.get("build"), name
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
            images.add(service["image"])
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
    assert len(images) == 1, f"every flowctl service uses one image, got {images}"


def test_every_flowctl_service_runs_listed_verbs_with_existing_options() -> None:
    doc = compose()
    ran = set()
    for name, service in flowctl_services(doc).items():
        runs = flowctl_invocations(service.get("entrypoint"), service.get("command"))
        assert runs, f"{name} runs no flowctl verb"
        for words in runs:
            ran.add(check_invocation(words))
    assert {"agent", "worker", "sink", "detect", "recommend"} <= ran


def test_flowctl_services_use_only_existing_settings_and_they_load() -> None:
    for name, service in flowctl_services(compose()).items():
        env = env_of(service)
        check_settings_env(set(env), f"compose service {name}")
        settings = load_settings(env={**env, "FLOWCTL_CONFIG": str(ROOT / "no-such-flowctl.toml")})
        assert settings.bootstrap_servers == "kafka:9092"
        assert settings.lake == "/data/lake" and settings.state_dir == "/data/state"
        assert settings.metrics_port > 0


def test_kafka_is_a_single_kraft_node_reachable_from_the_containers() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID must be a base64 UUID"
    listeners = dict(re.match(r"(\w+)://[^:]*:(\d+)", x).groups() for x in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == str(env["KAFKA_NODE_ID"]) and voter.split(":")[1] == listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    advertised = dict(re.match(r"(\w+)://(.*)", x).groups() for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    for service in flowctl_services(compose()).values():
        bootstrap = env_of(service)["FLOWCTL_BOOTSTRAP_SERVERS"]
        assert bootstrap in advertised.values(), f"{bootstrap} is not an advertised listener"
        host, port = bootstrap.split(":")
        assert host == "kafka" and port in listeners.values()
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def _run_init_script(tmp_path: Path, partitions: str) -> dict[str, int]:
    """Run kafka-init's script with a stand-in kafka-topics.sh; return {topic: partitions} it creates."""
    service = compose((("FLOWCTL_PARTITIONS", partitions),))["services"]["kafka-init"]
    script = service["command"][0] if isinstance(service["command"], list) else service["command"]
    log = tmp_path / "calls"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncase "$*" in *--describe*) echo "Topic: x";; esac\n')
    stub.chmod(0o755)
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    out = subprocess.run(["sh", "-c", script.replace("/opt/kafka/bin/kafka-topics.sh", str(stub))],
                         env={"PATH": os.environ["PATH"], **env_of(service)}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    created = {}
    for call in log.read_text().splitlines():
        args = call.split()
        if "--create" in args:
            assert "--if-not-exists" in args  # re-running the init step is harmless
            created[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    return created


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("partitions", ["8", "2"])
def test_kafka_init_creates_the_pipeline_topics_with_their_partition_counts(tmp_path: Path, partitions: str) -> None:
    created = _run_init_script(tmp_path, partitions)
    assert created == {spec.name: spec.partitions for spec in topics.topic_specs(int(partitions), 1)}


def test_flowctl_partitions_match_the_topics_kafka_init_creates() -> None:
    doc = compose((("FLOWCTL_PARTITIONS", "12"),))
    assert env_of(doc["services"]["kafka-init"])["PARTITIONS"] == "12"
    for service in flowctl_services(doc).values():
        assert env_of(service)["FLOWCTL_PARTITIONS"] == "12"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_shell_scripts_parse() -> None:
    for name, service in compose()["services"].items():
        if (service.get("entrypoint") or [None])[0] in ("/bin/sh", "sh"):
            script = service["command"][0] if isinstance(service["command"], list) else service["command"]
            out = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, timeout=10)
            assert out.returncode == 0, f"{name}: {out.stderr}"


def test_depends_on_waits_for_health_and_the_topic_step() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, dep in (service.get("depends_on") or {}).items():
            assert isinstance(dep, dict), f"{name}: depends_on {target} needs a condition"
            condition = dep["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health, which has no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart", "no") not in LONG_RUNNING, f"{target} is not a one-shot"
            else:
                pytest.fail(f"{name}: depends_on {target} with {condition}")
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"

    def reaches_init(name: str, seen: frozenset = frozenset()) -> bool:
        deps = services[name].get("depends_on") or {}
        return any(t == "kafka-init" and d["condition"] == "service_completed_successfully" or
                   (t not in seen and reaches_init(t, seen | {name})) for t, d in deps.items())
    for name in flowctl_services(compose()):
        assert reaches_init(name), f"{name} may start before the topics exist"


def test_long_running_services_restart_and_have_health_checks() -> None:
    for name, service in compose()["services"].items():
        if name == "kafka-init":
            assert service["restart"] == "on-failure"
            continue
        assert service.get("restart") in LONG_RUNNING, f"{name} has no restart policy"
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck without {key}"


def _python_check(service: dict) -> str | None:
    test = service["healthcheck"]["test"]
    return test[3] if test[:3] == ["CMD", "python", "-c"] else None


def test_metrics_health_checks_only_on_verbs_that_serve_metrics() -> None:
    for name, service in flowctl_services(compose()).items():
        invocations = flowctl_invocations(service.get("entrypoint"), service.get("command"))
        verbs = {check_invocation(w) for w in invocations}
        serves = any(invocation_serves_metrics(w) for w in invocations)
        probes_metrics = "/metrics" in (_python_check(service) or "")
        assert serves == probes_metrics, f"{name} ({', '.join(verbs)}): serves /metrics {serves}, health check probes it {probes_metrics}"


def test_python_health_checks_compile_and_import_what_exists() -> None:
    for name, service in compose()["services"].items():
        code = _python_check(service) if "healthcheck" in service else None
        if code is None:
            continue
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{name}: {node.module} has no {alias.name}"


def test_metrics_health_check_passes_on_a_metrics_endpoint_and_fails_without_one() -> None:
    from prometheus_client import start_http_server

    worker = compose()["services"]["worker"]
    code = _python_check(worker)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        ok = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FLOWCTL_METRICS_PORT": str(port)},
                            capture_output=True, timeout=30)
    finally:
        server.shutdown()
        thread.join(5)
    down = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FLOWCTL_METRICS_PORT": str(free_port())},
                          capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert down.returncode != 0


def test_volumes_lake_and_shared_worker_state() -> None:
    doc = compose()
    declared = set(doc["volumes"])

    def mounts(service: dict) -> dict[str, str]:
        out = {}
        for m in service.get("volumes", []):
            source, target = m.split(":")[:2]
            out[target] = source
        return out
    for name, service in doc["services"].items():
        for source in mounts(service).values():
            if not source.startswith(("/", ".", "$")):
                assert source in declared, f"{name}: volume {source} is not declared"
    services = doc["services"]
    lake = mounts(services["sink"])[env_of(services["sink"])["FLOWCTL_LAKE"]]
    for job in ("detect", "recommend"):
        assert mounts(services[job]).get("/data/lake") == lake, f"{job} must read the sink's lake volume"
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2
    # One service with replicas: every worker mounts the same named volume as its STATE_DIR (docs/stream.md).
    assert env_of(worker)["FLOWCTL_STATE_DIR"] in mounts(worker)
    assert "--interval" in " ".join(" ".join(w) for w in flowctl_invocations(services["detect"]["entrypoint"], services["detect"]["command"]))


def test_calico_agent_profile_reads_the_flow_logs_read_only() -> None:
    service = compose()["services"]["agent-calico"]
    assert service["profiles"] == ["calico"]
    (run,) = flowctl_invocations(service.get("entrypoint"), service["command"])
    source = run[run.index("--source") + 1]
    kind, _, path = source.partition(":")
    assert kind == "calico"
    assert any(m.split(":")[1] == path and m.endswith(":ro") for m in service["volumes"])


# ---- Kubernetes ---------------------------------------------------------------------------------


@functools.cache
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def k8s_objects() -> tuple[tuple[str, dict], ...]:
    out = []
    for resource in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc:
                out.append((resource, doc))
    return tuple(out)


def pod_specs() -> list[tuple[dict, dict]]:
    """(object, pod template) of every workload."""
    out = []
    for _, obj in k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            out.append((obj, obj["spec"]["template"]))
        elif obj["kind"] == "CronJob":
            out.append((obj, obj["spec"]["jobTemplate"]["spec"]["template"]))
    return out


def configmap_data() -> dict[str, str]:
    (cm,) = [o for _, o in k8s_objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "flowctl-settings"]
    return cm["data"]


def test_kustomization_lists_every_manifest() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files, f"kustomization.yaml must list exactly {sorted(files)}"
    assert len(k["resources"]) == len(set(k["resources"]))
    for _, obj in k8s_objects():
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace", k["namespace"]) == k["namespace"]
    (image,) = k["images"]
    assert image["newTag"] == PYPROJECT["project"]["version"], "the image tag follows the project version"


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kinds = set()
    for resource, obj in k8s_objects():
        try:
            validate_object(obj)
        except PolicyValidationError as exc:
            pytest.fail(f"{resource}: {exc}")
        kinds.add(obj["kind"])
    assert {"Namespace", "ConfigMap", "Secret", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
            "CronJob", "PersistentVolumeClaim", "DaemonSet"} <= kinds


def test_schema_validation_is_strict() -> None:
    (worker,) = [o for _, o in k8s_objects() if o["metadata"]["name"] == "flowctl-worker" and o["kind"] == "Deployment"]
    broken = copy.deepcopy(worker)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(PolicyValidationError):
        validate_object(broken)


def test_references_between_manifests_resolve() -> None:
    names = {(o["kind"], o["metadata"]["name"]) for _, o in k8s_objects()}
    images = {i["name"] for i in kustomization()["images"]}
    for obj, template in pod_specs():
        spec = template["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in names, obj["metadata"]["name"]
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for c in spec["containers"]:
            assert c["image"].split(":")[0] in images, f"{c['name']}: image {c['image']} is not managed by kustomization images"
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in names
                if "secretRef" in src:
                    assert ("Secret", src["secretRef"]["name"]) in names
            mounted = {v["name"] for v in spec.get("volumes", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= mounted


def test_containers_run_listed_verbs_and_use_existing_settings() -> None:
    check_settings_env(set(configmap_data()), "ConfigMap flowctl-settings")
    settings = load_settings(env={**configmap_data(), "FLOWCTL_CONFIG": str(ROOT / "no-such-flowctl.toml")})
    assert settings.bootstrap_servers
    for _, obj in k8s_objects():
        if obj["kind"] == "Secret":
            check_settings_env(set(obj.get("stringData", {})) | set(obj.get("data", {})), f"Secret {obj['metadata']['name']}")
    ran = set()
    for obj, template in pod_specs():
        for c in template["spec"]["containers"]:
            check_settings_env({e["name"] for e in c.get("env", [])}, f"{obj['metadata']['name']}/{c['name']}")
            entry = c.get("command")
            runs = flowctl_invocations(entry, c.get("args"))
            assert runs, f"{obj['metadata']['name']} runs no flowctl verb"
            ran |= {check_invocation(words) for words in runs}
    assert {"worker", "sink", "detect", "recommend", "agent"} <= ran


def test_secret_values_are_marked_placeholders() -> None:
    for resource, obj in k8s_objects():
        if obj["kind"] == "Secret":
            assert "PLACEHOLDER" in (K8S / resource).read_text()
            assert set(obj["stringData"].values()) == {"REPLACE-ME"}


def test_security_context_and_resources() -> None:
    for obj, template in pod_specs():
        spec, name = template["spec"], obj["metadata"]["name"]
        agent = obj["kind"] == "DaemonSet"
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{name}: resources.{kind}"
            if not agent:
                assert sc.get("readOnlyRootFilesystem") is True, name
                assert spec["securityContext"].get("runAsNonRoot") is True, name
                assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, f"{name}: read-only root needs a /tmp volume"
        if agent:
            for v in spec.get("volumes", []):
                if "hostPath" in v and "calico" in v["hostPath"]["path"]:
                    assert all(m.get("readOnly") for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] == v["name"])


def test_rbac_is_least_privilege_for_the_inventory_watch() -> None:
    roles = [o for _, o in k8s_objects() if o["kind"] in ("ClusterRole", "Role")]
    assert [r["metadata"]["name"] for r in roles] == ["flowctl-inventory"]
    assert roles[0]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    bindings = [o for _, o in k8s_objects() if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    bound = {s["name"] for b in bindings for s in b["subjects"]}
    assert bound == {"flowctl-worker"}
    for obj, template in pod_specs():
        spec = template["spec"]
        env = {e["name"]: e.get("value") for c in spec["containers"] for e in c.get("env", [])}
        if (env.get("FLOWCTL_INVENTORY") or configmap_data().get("FLOWCTL_INVENTORY") or "").startswith("kubernetes"):
            assert spec["serviceAccountName"] in bound, f"{obj['metadata']['name']} watches pods without the role"
        else:
            assert spec.get("automountServiceAccountToken") is False or spec["serviceAccountName"] not in bound, obj["metadata"]["name"]


def test_scrape_annotations_exactly_where_metrics_are_served() -> None:
    port = configmap_data()["FLOWCTL_METRICS_PORT"]
    for obj, template in pod_specs():
        invocations = [w for c in template["spec"]["containers"] for w in flowctl_invocations(c.get("command"), c.get("args"))]
        serves = any(invocation_serves_metrics(w) for w in invocations)
        annotations = template["metadata"].get("annotations", {})
        assert (annotations.get("prometheus.io/scrape") == "true") == serves, obj["metadata"]["name"]
        if serves:
            assert annotations["prometheus.io/port"] == port
            ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            assert int(port) in ports


def test_workers_share_their_window_state() -> None:
    (worker,) = [o for _, o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet") and "worker" in o["metadata"]["name"]]
    assert worker["kind"] == "Deployment" and worker["spec"]["replicas"] >= 2
    spec = worker["spec"]["template"]["spec"]
    state_dir = configmap_data()["FLOWCTL_STATE_DIR"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == state_dir]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    (pvc,) = [o for _, o in k8s_objects() if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every worker must reach every partition's snapshot"


def test_cronjobs_do_not_overlap() -> None:
    jobs = [o for _, o in k8s_objects() if o["kind"] == "CronJob"]
    assert {"flowctl-detect", "flowctl-recommend"} <= {j["metadata"]["name"] for j in jobs}
    for job in jobs:
        assert len(job["spec"]["schedule"].split()) == 5
        assert job["spec"]["concurrencyPolicy"] == "Forbid"


# ---- Grafana dashboard -----------------------------------------------------------------------------

_METRIC_TYPES = {"Counter": ("_total", "_created"), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count", "_created"),
                 "Summary": ("", "_sum", "_count", "_created"), "Info": ("_info",), "Enum": ("",)}
_TARGET_LABELS = {"instance", "job", "pod", "namespace", "container", "service", "node", "le", "quantile"}
_PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "stddev", "topk", "bottomk", "quantile", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "idelta",
    "deriv", "clamp_min", "clamp_max", "abs", "histogram_quantile", "max_over_time", "min_over_time", "avg_over_time",
    "sum_over_time", "absent", "changes", "resets", "vector", "scalar", "time", "label_replace", "round", "ceil", "floor",
}


@functools.cache
def defined_metrics() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """Metric name → (type, label names, variable name) for every prometheus_client metric defined in pipeline/ and jobs/."""
    out = {}
    for path in [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("jobs/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            call, func = node.value, node.value.func
            kind = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if kind not in _METRIC_TYPES or not call.args or not isinstance(call.args[0], ast.Constant):
                continue
            labels = call.args[2] if len(call.args) > 2 else next((k.value for k in call.keywords if k.arg == "labelnames"), None)
            names = tuple(e.value for e in labels.elts) if isinstance(labels, ast.List | ast.Tuple) else ()
            target = node.targets[0]
            out[call.args[0].value.removesuffix("_total")] = (kind, names, target.id if isinstance(target, ast.Name) else "")
    return out


def exposed_series() -> dict[str, str]:
    """Series name as Prometheus scrapes it → metric name."""
    return {name + suffix: name for name, (kind, _, _) in defined_metrics().items() for suffix in _METRIC_TYPES[kind]}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    panels = [p for p in doc["panels"] for p in [p, *p.get("panels", [])]]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def check_promql(expr: str) -> set[str]:
    """Assert every metric an expression names is defined in the code, with its labels; return the metrics."""
    series, metrics = exposed_series(), defined_metrics()
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    used = set()
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text):
        name = m.group(1)
        assert name in series, f"{expr}: {name} is not a metric defined in the code"
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)):
            assert label in metrics[series[name]][1] or label in _TARGET_LABELS, f"{expr}: {name} has no label {label}"
    grouped = {lbl.strip() for g in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text) for lbl in g.split(",") if lbl.strip()}
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", text)
    for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if word in _PROMQL_WORDS:
            continue
        assert word in series, f"{expr}: {word} is not a metric defined in the code"
        used.add(series[word])
    for label in grouped:
        assert any(label in metrics[m][1] for m in used) or label in _TARGET_LABELS, f"{expr}: no metric has label {label}"
    assert used, f"{expr} references no flowctl metric"
    return used


def test_promql_check_rejects_unknown_metrics_and_labels() -> None:
    with pytest.raises(AssertionError):
        check_promql("sum(rate(flowctl_worker_mesages_total[5m]))")
    with pytest.raises(AssertionError):
        check_promql("sum(rate(flowctl_worker_messages[5m]))")  # a counter is scraped as <name>_total
    with pytest.raises(AssertionError):
        check_promql('sum(rate(flowctl_worker_messages_total{role="x"}[5m]))')
    with pytest.raises(AssertionError):
        check_promql("sum by (topic) (rate(flowctl_offset_gaps_total[5m]))")
    assert check_promql('sum by (role) (increase(flowctl_offset_gaps_total{role="sink"}[1h]))') == {"flowctl_offset_gaps"}


def test_dashboard_is_valid_and_queries_only_metrics_defined_in_the_code() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["panels"], list)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    exprs = dashboard_exprs()
    assert exprs
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            check_promql(re.sub(r"label_values\(([^,]+),.*\)", r"\1", var["definition"]))
    for expr in exprs:
        check_promql(expr)


def test_dashboard_covers_every_metric_the_code_updates() -> None:
    on_dashboard = set().union(*(check_promql(e) for e in dashboard_exprs()))
    code = "\n".join(p.read_text() for p in [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("jobs/**/*.py")])
    for name, (_, _, var) in defined_metrics().items():
        updated = var and re.search(rf"\b{var}\.(inc|dec|set|observe|labels|info|state|time|track_inprogress)\b", code)
        if updated:
            assert name in on_dashboard, f"{name} is updated by the code but has no panel"
    assert {"flowctl_worker_dead_letters", "flowctl_offset_gaps", "flowctl_worker_open_windows"} <= on_dashboard


def test_dashboard_panels_do_not_overlap() -> None:
    cells = set()
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another at {(x, y)}"
                cells.add((x, y))


# ---- operations guide -------------------------------------------------------------------------------


def test_operations_guide_names_only_existing_settings_and_verbs() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    check_settings_env(set(re.findall(r"\bFLOWCTL_[A-Z0-9_]+", text)), "docs/operations.md")
    for verb in re.findall(r"`flowctl ([a-z][a-z-]*)", text):
        assert verb in cli_verbs(), f"docs/operations.md mentions `flowctl {verb}`, which `flowctl --help` does not list"

"""Offline checks of the deployment files: Dockerfile, docker-compose.yml, deploy/.

No Docker engine or cluster is needed (none runs where CI does); what can be checked
without one is checked here:

- docker-compose.yml against the Compose Specification JSON schema (vendored in
  tests/schemas/, see its README), the Kubernetes manifests against the API schemas
  that ``kubernetes-validate`` bundles, in strict mode (unknown fields are errors);
- every file compose mounts or builds from exists; every image carries a version tag;
- the wiring agrees end to end: Prometheus scrapes each proxy where it listens, each
  proxy config's Redis, OTLP and upstream URLs name a service and a port that service
  listens on, Grafana's data sources and the collector's exporter likewise, and each
  ``${VAR}`` a config uses is set in the container's environment;
- the spendgate configs pass ``spendgate check-config``;
- the Dockerfile's shape (stages, non-root user, healthcheck, entrypoint, ports) and the
  wheel it installs carries the tokenizer files and the price catalog.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from spendgate.config import Config, load_config  # noqa: E402
from tests.conftest import need, spendgate_command  # noqa: E402

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "kubernetes"
PROMETHEUS_YML = ROOT / "grafana" / "prometheus" / "prometheus.yml"
DATASOURCES_YML = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yaml"

# Manifests kept out of kustomization.yaml on purpose (each file's header says why).
K8S_NOT_APPLIED = {"secret.example.yaml", "servicemonitor.yaml", "sidecar-example.yaml"}
# Kinds with no schema in kubernetes-validate: checked structurally below instead.
K8S_NO_SCHEMA = {"Kustomization", "ServiceMonitor"}
# Oldest Kubernetes the manifests target (native sidecars: 1.29) and the newest bundled.
K8S_VERSIONS = ("1.29.0", "latest")
# Compose services with no healthcheck, and why.
NO_HEALTHCHECK = {"otel-collector": "the image is FROM scratch: no shell or wget to probe with"}
# Where the third-party images listen by default (their commands here change none).
IMAGE_PORTS = {"redis": {6379}, "prometheus": {9090}, "alertmanager": {9093}, "grafana": {3000}}


def require(module: str) -> ModuleType:
    """Import a test dependency; skip without it, except under CI where it must be there."""
    try:
        return importlib.import_module(module)
    except ImportError:
        need(f"{module} is not installed (pip install -e '.[test]')")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def env_refs(tree: Any) -> set[str]:
    """The ``${VAR}`` names used in a parsed config's values (comments don't count)."""
    if isinstance(tree, str):
        return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", tree))
    if isinstance(tree, dict):
        return set().union(*map(env_refs, tree.values()))
    if isinstance(tree, list):
        return set().union(*map(env_refs, tree))
    return set()


def load_all_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage (a stage starts at FROM; ARGs before it are global)."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def dockerfile_global_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for name, value in dockerfile_instructions():
        if name == "FROM":
            break
        if name == "ARG" and "=" in value:
            key, default = value.split("=", 1)
            args[key.strip()] = default.strip()
    return args


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), value
    return parsed


def image_default(instruction: str) -> list[str]:
    """The runtime stage's exec-form ENTRYPOINT or CMD."""
    found = [v for name, v in dockerfile_stages()[-1] if name == instruction]
    assert found, f"the runtime stage has no {instruction}"
    return exec_form(found[-1])


def flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def test_dockerfile_is_multi_stage_from_pinned_slim_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    base = {v.split()[0] for stage in stages for name, v in stage if name == "FROM"}
    resolved = {dockerfile_global_args().get(b.strip("${}"), b) if b.startswith("$") else b
                for b in base}
    assert len(resolved) == 1, f"builder and runtime should share one base image: {resolved}"
    image = resolved.pop()
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", image), \
        f"{image}: pin python 3.11 by full version and Debian release"
    runtime = stages[-1]
    assert any(name == "COPY" and "--from=" in v for name, v in runtime), \
        "the runtime stage should copy the built environment from the builder"
    assert not any(name == "RUN" and "pip install" in v for name, v in runtime), \
        "the runtime stage should not install anything with pip"


def test_dockerfile_runs_spendgate_serve_as_non_root_with_a_healthcheck() -> None:
    runtime = dockerfile_stages()[-1]
    users = [v for name, v in runtime if name == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]

    assert image_default("ENTRYPOINT") == ["spendgate"]
    cmd = image_default("CMD")
    assert cmd[0] == "serve" and flag(cmd, "--host") == "0.0.0.0", cmd
    port = flag(cmd, "--port")
    exposed = {v.split("/")[0] for name, v in runtime if name == "EXPOSE"}
    assert port is not None and exposed == {port}, (cmd, exposed)

    healthchecks = [v for name, v in runtime if name == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    probe = healthchecks[0].split("CMD", 1)[1].strip()
    assert f"http://127.0.0.1:{port}/healthz" in probe, probe
    assert exec_form(probe)[0] == "python", "slim images have no curl or wget: probe with python"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied: set[str] = set()
    for name, value in dockerfile_instructions():
        if name == "COPY" and "--from=" not in value:
            sources = [s for s in value.split()[:-1] if not s.startswith("--")]
            copied.update(s for s in sources if "*" not in s)
    assert copied, "the Dockerfile copies nothing from the build context"
    assert patterns[0] == "*", ".dockerignore should exclude everything by default"
    assert copied <= kept, f"COPY sources excluded by .dockerignore: {copied - kept}"
    for source in copied:
        assert (ROOT / source).exists(), source


def test_wheel_carries_the_tokenizers_and_the_price_catalog(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info behind.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    if (ROOT / "README.md").exists():
        shutil.copy(ROOT / "README.md", src)
    for package in ("service", "exporters"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("spendgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # One import package and its metadata: nothing else at the top of site-packages.
    assert {name.split("/")[0] for name in names} == {"spendgate", wheel.name.split("-py")[0]
                                                      + ".dist-info"}
    assert {"spendgate/__init__.py", "spendgate/exporters/__init__.py",
            "spendgate/budgets/store/redis.py", "spendgate/py.typed"} <= names
    data = sorted(p.name for p in (ROOT / "service" / "accounting" / "data").iterdir()
                  if p.is_file())
    assert {"prices.json", "SHA256SUMS", "cl100k_base.tiktoken", "o200k_base.tiktoken"} <= set(data)
    missing = [name for name in data if f"spendgate/accounting/data/{name}" not in names]
    assert not missing, f"package data left out of the wheel: {missing}"


# ------------------------------------------------------------------------------ compose

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict) and data.get("services")
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def builds_spendgate(service: dict[str, Any]) -> bool:
    return "build" in service


def is_proxy(service: dict[str, Any]) -> bool:
    """A service running ``spendgate serve`` (the image's default command)."""
    return builds_spendgate(service) and (service.get("command") or image_default("CMD"))[0] == "serve"


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or (image_default("CMD") if builds_spendgate(service) else [])
    assert isinstance(command, list), "write commands in exec (list) form"
    return command


def listen_ports(name: str, service: dict[str, Any]) -> set[int]:
    """The container ports a compose service listens on."""
    if builds_spendgate(service):
        port = flag(command_of(service), "--port")
        return {int(port)} if port else set()
    if name in IMAGE_PORTS:
        return IMAGE_PORTS[name]
    config = mounted_config(service, flag(command_of(service), "--config")
                            or flag(command_of(service), "-config.file"))
    return {int(endpoint.rsplit(":", 1)[1]) for endpoint in _endpoints(config)}


def _endpoints(node: Any) -> list[str]:
    """Every ``endpoint`` / ``http_listen_port`` in a collector or Tempo config tree."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "endpoint" and isinstance(value, str) and value.startswith("0.0.0.0:"):
                found.append(value)
            elif key == "http_listen_port":
                found.append(f"0.0.0.0:{value}")
            else:
                found.extend(_endpoints(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_endpoints(item))
    return found


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository path of each bind mount (short syntax)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), "write volumes in short syntax"
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def mounted_config(service: dict[str, Any], container_path: str | None) -> Any:
    assert container_path, "no config path in the service's command"
    mounts = bind_mounts(service)
    assert container_path in mounts, f"{container_path} is not mounted"
    return load_yaml(mounts[container_path])


def proxy_config(service: dict[str, Any]) -> tuple[Path, Config]:
    path = service.get("environment", {}).get("SPENDGATE_CONFIG")
    assert path, "a proxy service sets SPENDGATE_CONFIG"
    source = bind_mounts(service)[path]
    return source, load_config(source, environ={})


def available_to(compose: dict[str, Any], name: str) -> set[str]:
    """Services running whenever ``name`` runs: profile-less ones and its profiles' ones."""
    profiles = set(services(compose)[name].get("profiles", []))
    return {other for other, service in services(compose).items()
            if not service.get("profiles") or profiles & set(service["profiles"])}


def assert_reachable(compose: dict[str, Any], url: str, from_service: str, what: str,
                     always: bool = True) -> None:
    """``url`` names a compose service and a port it listens on; with ``always``, one that
    runs whenever ``from_service`` does (a scrape target may come and go with a profile)."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    host, port = parts.hostname, parts.port
    assert host in services(compose), f"{what}: {url} names no compose service"
    assert not always or host in available_to(compose, from_service), \
        f"{what}: {host} is not running whenever {from_service} is (profiles)"
    assert port in listen_ports(host, services(compose)[host]), \
        f"{what}: {host} does not listen on {port}"


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    jsonschema = require("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The schema rejects a misspelt key, so a pass above means something.
    broken = {**compose, "services": {**compose["services"], "redis": {
        **compose["services"]["redis"], "helthcheck": {}}}}
    assert not validator.is_valid(broken)


def test_compose_mounts_and_builds_only_files_in_the_repo(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: mounts {source} (at {target}), which is missing"
            assert source.is_relative_to(ROOT), f"{name}: mounts {source} from outside the repo"
        # Paths the service is told about inside a mounted directory (Grafana's home dashboard).
        for key, value in service.get("environment", {}).items():
            for target, source in bind_mounts(service).items():
                if str(value).startswith(target + "/"):
                    inside = source / str(value)[len(target) + 1:]
                    assert inside.exists(), f"{name}: {key}={value}: {inside} is missing"
        if builds_spendgate(service):
            assert service["build"] == ".", name
            assert (ROOT / "Dockerfile").is_file()


def test_every_image_has_a_version_tag(compose: dict[str, Any]) -> None:
    images = {name: service.get("image") for name, service in services(compose).items()}
    k8s_images = {f"{path.name}/{c['name']}": c["image"]
                  for path, doc in k8s_documents() for c in pod_containers(doc)}
    for name, image in {**images, **k8s_images}.items():
        assert image, f"{name}: no image (services that build still name their image)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}: pin a version, not latest"
        assert "@" in image or re.search(r"\d", tag) or tag == "local", \
            f"{name}: {image}: the tag should be a version"
    built = {services(compose)[n]["image"] for n in images if builds_spendgate(services(compose)[n])}
    assert len(built) == 1, f"services built here should share one image name: {built}"


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        healthcheck = service.get("healthcheck")
        if name in NO_HEALTHCHECK:
            assert healthcheck is None, f"{name} has a healthcheck now: drop its exemption"
            continue
        assert healthcheck, f"{name}: no healthcheck"
        if healthcheck.get("disable"):
            assert "ports" not in service, f"{name} serves ports but disables its healthcheck"
            continue
        if is_proxy(service):
            (port,) = listen_ports(name, service)
            assert f"http://127.0.0.1:{port}/healthz" in " ".join(healthcheck["test"]), name


def test_depends_on_stays_within_what_runs(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for dependency in service.get("depends_on", {}):
            assert dependency in available_to(compose, name), \
                f"{name} depends on {dependency}, which does not run in all of its profiles"


def test_published_ports_are_ports_the_services_listen_on(compose: dict[str, Any]) -> None:
    published: list[str] = []
    for name, service in services(compose).items():
        for mapping in service.get("ports", []):
            host_ip, host_port, container_port = str(mapping).split(":")
            assert host_ip == "127.0.0.1", f"{name}: publish on 127.0.0.1 only ({mapping})"
            assert int(container_port) in listen_ports(name, service), f"{name}: {mapping}"
            published.append(host_port)
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"


def test_prometheus_scrapes_every_proxy_where_it_listens(compose: dict[str, Any]) -> None:
    prometheus = load_yaml(PROMETHEUS_YML)
    targets: set[str] = set()
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{n}:{dns['port']}" for n in dns["names"])
    proxies = [name for name, service in services(compose).items() if is_proxy(service)]
    assert "spendgate" in proxies
    for name in proxies:
        (port,) = listen_ports(name, services(compose)[name])
        _, config = proxy_config(services(compose)[name])
        assert config.server.port == port, f"{name}: its config says port {config.server.port}"
        assert f"{name}:{port}" in targets, \
            f"prometheus.yml does not scrape {name}:{port} (its targets: {sorted(targets)})"
        assert_reachable(compose, f"{name}:{port}", "prometheus", "prometheus scrape target",
                         always=False)
    for alerting in prometheus.get("alerting", {}).get("alertmanagers", []):
        for static in alerting["static_configs"]:
            for target in static["targets"]:
                assert_reachable(compose, target, "prometheus", "prometheus alerting")
    # Relative to prometheus.yml's directory, where compose mounts each rule file.
    mounts = bind_mounts(services(compose)["prometheus"])
    for rule_file in prometheus.get("rule_files", []):
        assert f"/etc/prometheus/{rule_file}" in mounts, f"rule file {rule_file} is not mounted"


def test_proxy_configs_name_services_and_ports_that_exist(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if not is_proxy(service):
            continue
        source, config = proxy_config(service)
        what = f"{name} ({source.name})"
        assert config.store.url.startswith("redis://"), f"{what}: replicas share a Redis store"
        assert_reachable(compose, config.store.url, name, f"{what} store.url")
        assert config.telemetry.endpoint, f"{what}: no telemetry.endpoint"
        assert_reachable(compose, config.telemetry.endpoint, name, f"{what} telemetry.endpoint")
        collector_host = urlsplit(config.telemetry.endpoint).hostname or ""
        collector = services(compose)[collector_host]
        receivers = mounted_config(collector, flag(command_of(collector), "--config"))["receivers"]
        protocol = "grpc" if config.telemetry.protocol == "grpc" else "http"
        receiver = receivers["otlp"]["protocols"][protocol]["endpoint"]
        assert urlsplit(config.telemetry.endpoint).port == int(receiver.rsplit(":", 1)[1]), \
            f"{what}: telemetry.endpoint is not the collector's OTLP/{protocol} port"
        for upstream, spec in config.upstreams.items():
            host = urlsplit(spec.url).hostname
            if host in services(compose):
                assert_reachable(compose, spec.url, name, f"{what} upstreams.{upstream}")
        # Each ${VAR} the config reads must be set for the container, or it is silently "".
        environment = service.get("environment", {})
        for var in env_refs(load_yaml(source)):
            assert var in environment, f"{what} reads ${{{var}}}, which {name} does not set"


def test_demo_profile_runs_without_keys_against_the_simulator(compose: dict[str, Any]) -> None:
    demo = {name for name, s in services(compose).items() if "demo" in s.get("profiles", [])}
    assert {"simulator", "traffic"} <= demo
    demo_proxies = [name for name in demo if is_proxy(services(compose)[name])]
    assert len(demo_proxies) == 1, demo_proxies
    (proxy,) = demo_proxies
    _, config = proxy_config(services(compose)[proxy])
    for upstream, spec in config.upstreams.items():
        assert urlsplit(spec.url).hostname == "simulator", f"demo upstream {upstream}: {spec.url}"
        assert spec.api_key is None, f"demo upstream {upstream} should need no key"
    traffic = command_of(services(compose)["traffic"])
    proxy_url = flag(traffic, "--proxy-url")
    assert proxy_url, traffic
    assert_reachable(compose, proxy_url, "traffic", "traffic --proxy-url")
    assert urlsplit(proxy_url).hostname == proxy
    _, main = proxy_config(services(compose)["spendgate"])
    assert config.store.url != main.store.url, "the demo should not write the real budget data"


def test_compose_demo_proxy_is_configured_like_spendgate_demo(compose: dict[str, Any],
                                                              tmp_path: Path) -> None:
    # Both demos should show the same upstreams and budgets on the dashboards.
    from spendgate.config import parse_config
    from spendgate.demo.runner import demo_config

    (proxy,) = [n for n, s in services(compose).items() if "demo" in s.get("profiles", [])
                and is_proxy(s)]
    _, compose_demo = proxy_config(services(compose)[proxy])
    cli_demo = parse_config(demo_config("http://simulator:8000", tmp_path / "ledger"), environ={})
    assert compose_demo.upstreams == cli_demo.upstreams
    assert compose_demo.budgets == cli_demo.budgets


def test_grafana_and_collector_point_at_running_services(compose: dict[str, Any]) -> None:
    for source in load_yaml(DATASOURCES_YML)["datasources"]:
        assert_reachable(compose, source["url"], "grafana", f"grafana data source {source['name']}")
    collector = services(compose)["otel-collector"]
    config = mounted_config(collector, flag(command_of(collector), "--config"))
    exporters = config["exporters"]
    for pipeline in config["service"]["pipelines"].values():
        for exporter in pipeline["exporters"]:
            endpoint = (exporters.get(exporter) or {}).get("endpoint")
            if endpoint:
                assert_reachable(compose, endpoint, "otel-collector", f"collector {exporter}")
    assert "otlp/tempo" in config["service"]["pipelines"]["traces"]["exporters"]


def test_deploy_configs_pass_check_config(tmp_path: Path) -> None:
    configs = sorted((ROOT / "deploy").glob("*.yaml"))
    assert {p.name for p in configs} >= {"spendgate.yaml", "spendgate-demo.yaml"}
    configmap = next(doc for _, doc in k8s_documents() if doc["kind"] == "ConfigMap")
    k8s_config = tmp_path / "configmap-spendgate.yaml"
    k8s_config.write_text(configmap["data"]["spendgate.yaml"])
    for path in [*configs, k8s_config]:
        result = subprocess.run(
            spendgate_command("check-config", str(path)),
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"
        assert result.stdout.strip().endswith("upstreams)"), result.stdout


# --------------------------------------------------------------------------- Kubernetes

def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in load_all_yaml(path)]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    return doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else None


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]] if spec else []


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in k8s_documents()
               if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} definitions"
    return matches[0]


def spendgate_container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_containers(doc) if c["image"].startswith("spendgate:")]
    return container


def k8s_proxy_config() -> Config:
    from spendgate.config import parse_config

    text = find("ConfigMap", "spendgate-config")["data"]["spendgate.yaml"]
    return parse_config(yaml.safe_load(text), environ={})


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    kv = require("kubernetes_validate")
    checked = 0
    for path, doc in k8s_documents():
        if doc["kind"] in K8S_NO_SCHEMA:
            continue
        for version in K8S_VERSIONS:
            version = kv.latest_version() if version == "latest" else version
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as error:
                pytest.fail(f"{path.name} {doc['kind']} (Kubernetes {version}): "
                            f"{'.'.join(map(str, error.path))}: {error.message}")
        checked += 1
    assert checked >= 8
    # Strict mode rejects a misspelt field, so the passes above mean something.
    broken = json.loads(json.dumps(find("Deployment", "spendgate")))
    broken["spec"]["replica"] = 3
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def test_kustomization_applies_every_manifest_but_the_optional_ones() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    resources = set(kustomization["resources"])
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert present == resources | K8S_NOT_APPLIED, present ^ (resources | K8S_NOT_APPLIED)
    assert not resources & K8S_NOT_APPLIED
    namespace = kustomization["namespace"]
    for _, doc in k8s_documents():
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    assert find("Namespace", namespace)
    assert {i["name"] for i in kustomization["images"]} == {"spendgate"}


def test_kubernetes_proxy_deployment_is_replicated_probed_and_locked_down() -> None:
    deployment = find("Deployment", "spendgate")
    assert deployment["spec"]["replicas"] >= 3
    pod = deployment["spec"]["template"]
    container = spendgate_container(deployment)
    config = k8s_proxy_config()
    port = int(flag(container["args"], "--port") or config.server.port)
    assert config.server.port == port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert ports.get(container[probe]["httpGet"]["port"], container[probe]["httpGet"]["port"]) \
            == port
    assert container["resources"]["requests"] and container["resources"]["limits"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"

    security = pod["spec"]["securityContext"]
    runtime_user = [v for name, v in dockerfile_stages()[-1] if name == "USER"][-1].split(":")[0]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == runtime_user
    locked = container["securityContext"]
    assert locked["readOnlyRootFilesystem"] is True
    assert locked["allowPrivilegeEscalation"] is False
    assert locked["capabilities"]["drop"] == ["ALL"]
    # The writable places the image uses: its WORKDIR and /tmp.
    workdir = [v for name, v in dockerfile_stages()[-1] if name == "WORKDIR"][-1]
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {workdir, "/tmp"} <= mounted
    env = {e["name"]: e for e in container["env"]}
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["SPENDGATE_CONFIG"]["value"] == f"{config_mount['mountPath']}/spendgate.yaml"
    text = find("ConfigMap", "spendgate-config")["data"]["spendgate.yaml"]
    for var in env_refs(yaml.safe_load(text)):
        assert var in env, f"the ConfigMap reads ${{{var}}}, which the container does not set"
    secret = find("Secret", "spendgate-upstream-keys")
    for entry in env.values():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "spendgate-upstream-keys" and ref["key"] in secret["stringData"]
            assert ref["optional"] is True, "without the Secret, callers' own keys are used"


def test_kubernetes_services_select_their_pods_and_redis_matches_the_store() -> None:
    deployment = find("Deployment", "spendgate")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find("Service", "spendgate")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in spendgate_container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    pdb = find("PodDisruptionBudget", "spendgate")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]

    store = urlsplit(k8s_proxy_config().store.url)
    assert store.scheme == "redis"
    redis_service = find("Service", store.hostname or "")
    assert store.port in {p["port"] for p in redis_service["spec"]["ports"]}
    redis = find("Deployment", "redis")
    assert redis_service["spec"]["selector"].items() <= \
        redis["spec"]["template"]["metadata"]["labels"].items()


def test_servicemonitor_scrapes_the_proxy_service() -> None:
    # No schema bundled for the prometheus-operator CRD: check the fields it relies on.
    monitor = find("ServiceMonitor", "spendgate")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = find("Service", "spendgate")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    assert set(monitor["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}


def test_sidecar_example_points_the_app_at_localhost() -> None:
    app = find("Deployment", "example-llm-app")
    sidecar = spendgate_container(app)
    assert sidecar in app["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: starts before the app"
    port = int(flag(sidecar["args"], "--port") or 0)
    config = k8s_proxy_config()
    (main,) = app["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["OPENAI_BASE_URL"] == f"http://localhost:{port}/openai/v1"
    assert env["ANTHROPIC_BASE_URL"] == f"http://localhost:{port}/anthropic"
    assert config.upstreams["openai"].provider == "openai"
    assert config.upstreams["anthropic"].provider == "anthropic"
    volumes = {v["name"]: v for v in app["spec"]["template"]["spec"]["volumes"]}
    (config_mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == "/etc/spendgate"]
    assert volumes[config_mount["name"]]["configMap"]["name"] == "spendgate-config"


# ------------------------------------------------------- safe defaults (issue 15, item 5)

# Configs exempt from "no budget escapable by a header", and why.
HEADER_BUDGETS_OK = {
    "spendgate-demo.yaml": "every upstream is the simulator: its budgets guard no money, and "
                           "its traffic names projects by header, as `spendgate demo` does"}
CLIENT_LABEL = ("spendgate/client", "true")     # pods that may call the proxy


def deploy_configs() -> dict[str, tuple[Any, Config]]:
    """Every example proxy config, by name: the raw YAML tree and the parsed config."""
    from spendgate.config import parse_config

    found: dict[str, tuple[Any, Config]] = {}
    for path in sorted((ROOT / "deploy").glob("*.yaml")):
        raw = load_yaml(path)
        found[path.name] = (raw, parse_config(raw, environ={}))
    text = find("ConfigMap", "spendgate-config")["data"]["spendgate.yaml"]
    found["kubernetes/configmap.yaml"] = (yaml.safe_load(text),
                                          parse_config(yaml.safe_load(text), environ={}))
    return found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is read here: {selector}"
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def pod_labels(name: str) -> dict[str, str]:
    labels: dict[str, str] = find("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    return labels


def policy_for(pod: str) -> dict[str, Any]:
    policies = [doc for _, doc in k8s_documents() if doc["kind"] == "NetworkPolicy"
                and selects(doc["spec"]["podSelector"], pod_labels(pod))]
    assert len(policies) == 1, f"{len(policies)} NetworkPolicies select the {pod} pods"
    return policies[0]


def test_network_policies_admit_only_clients_and_prometheus_to_the_proxy() -> None:
    kv = require("kubernetes_validate")
    policies = [(path, doc) for path, doc in k8s_documents() if doc["kind"] == "NetworkPolicy"]
    assert policies, "deploy/kubernetes has no NetworkPolicy"
    for path, doc in policies:
        kv.validate(doc, kv.latest_version(), strict=True)
        assert path.name in load_yaml(K8S / "kustomization.yaml")["resources"], path.name
    proxy = policy_for("spendgate")
    assert proxy["spec"]["policyTypes"] == ["Ingress"]  # egress: the providers, Redis, OTLP
    container = spendgate_container(find("Deployment", "spendgate"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (rule,) = proxy["spec"]["ingress"]
    assert [ports.get(p["port"], p["port"]) for p in rule["ports"]] == [ports["http"]]
    peers = rule["from"]
    assert peers, "an ingress rule without peers admits every pod"
    clients = [p for p in peers if "namespaceSelector" not in p
               or p["namespaceSelector"] == {}]
    monitors = [p for p in peers if p not in clients]
    assert [p["podSelector"] for p in clients] == [{"matchLabels": dict([CLIENT_LABEL])}]
    for peer in peers:
        assert "ipBlock" not in peer and peer.get("podSelector", {}).get("matchLabels"), peer
    (prometheus,) = monitors  # one namespace and its Prometheus pods, both named
    assert prometheus["namespaceSelector"]["matchLabels"]
    # A pod that is neither a client nor Prometheus is not admitted (the app example's
    # pods reach their own sidecar on localhost, never the Service).
    assert not any(selects(p["podSelector"], pod_labels("example-llm-app")) for p in clients)


def test_redis_is_reachable_only_from_spendgate() -> None:
    policy = policy_for("redis")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] in (["redis"], [6379])
    spendgate_pods = [pod_labels("spendgate"), pod_labels("example-llm-app")]  # proxy, sidecar
    for peer in rule["from"]:
        assert set(peer) == {"podSelector"}, f"only pods of this namespace: {peer}"
        assert any(selects(peer["podSelector"], labels) for labels in spendgate_pods), peer
    assert any(selects(p["podSelector"], pod_labels("spendgate")) for p in rule["from"])
    assert not any(selects(p["podSelector"], {CLIENT_LABEL[0]: CLIENT_LABEL[1]})
                   for p in rule["from"])


def test_deploy_examples_turn_virtual_keys_on_from_their_secrets(compose: dict[str, Any]) -> None:
    k8s_env = {e["name"]: e for e in spendgate_container(find("Deployment", "spendgate"))["env"]}
    secret = find("Secret", "spendgate-upstream-keys")["stringData"]
    compose_env = services(compose)["spendgate"]["environment"]
    for name, (raw, config) in deploy_configs().items():
        if name in HEADER_BUDGETS_OK:
            continue
        assert config.keys, f"{name}: virtual keys are off"
        for i, key in enumerate(raw["keys"]):
            (var,) = env_refs(key["key"]) or {None}
            assert var and key["key"] in (f"${{{var}}}", f"${{{var}:-}}"), \
                f"{name}: keys.{i}.key is not read from the environment: a literal is public"
            if name.startswith("kubernetes/"):
                ref = k8s_env[var]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "spendgate-upstream-keys" and ref["key"] in secret
            else:
                assert var in compose_env, f"{name} reads ${{{var}}}, compose does not set it"
    # The sidecar shape reads the same ConfigMap: its proxy gets the keys, its app one of them.
    app = find("Deployment", "example-llm-app")
    sidecar_env = {e["name"] for e in spendgate_container(app)["env"]}
    raw, _ = deploy_configs()["kubernetes/configmap.yaml"]
    assert env_refs(raw["keys"]) <= sidecar_env
    (main,) = app["spec"]["template"]["spec"]["containers"]
    sdk_keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in main["env"]
                if "valueFrom" in e}
    assert sdk_keys.get("OPENAI_API_KEY") in env_refs(raw["keys"])


def test_deploy_examples_allow_the_hosts_they_are_reached_by(compose: dict[str, Any]) -> None:
    from spendgate.config import allowed_hosts

    configs = deploy_configs()
    for name, (_, config) in configs.items():
        assert config.server.allowed_hosts, f"{name}: server.allowed_hosts is not set"
        assert "*" not in config.server.allowed_hosts, name
        allowed_hosts(config.server)  # resolves for where it binds
    # Kubernetes: the Service by each of its DNS names, and localhost for the sidecar shape.
    service = find("Service", "spendgate")["metadata"]
    short, namespace = service["name"], service["namespace"]
    k8s = set(configs["kubernetes/configmap.yaml"][1].server.allowed_hosts or ())
    assert {short, f"{short}.{namespace}", f"{short}.{namespace}.svc",
            f"{short}.{namespace}.svc.cluster.local", "localhost"} <= k8s
    app = find("Deployment", "example-llm-app")
    (main,) = app["spec"]["template"]["spec"]["containers"]
    for entry in main["env"]:
        if entry["name"].endswith("_BASE_URL"):
            assert urlsplit(entry["value"]).hostname in k8s, entry
    # Compose: each proxy by its service name (and the demo by the traffic's URL), and
    # localhost through the port published on 127.0.0.1.
    for service_name, spec in services(compose).items():
        if is_proxy(spec):
            source, config = proxy_config(spec)
            assert {service_name, "localhost"} <= set(config.server.allowed_hosts or ()), \
                source.name
    traffic = flag(command_of(services(compose)["traffic"]), "--proxy-url") or ""
    _, demo = proxy_config(services(compose)[urlsplit(traffic).hostname or ""])
    assert urlsplit(traffic).hostname in (demo.server.allowed_hosts or ())


def test_the_image_default_allows_only_the_loopback_names() -> None:
    from spendgate.config import LOOPBACK_NAMES, allowed_hosts

    env: dict[str, str] = {}
    for name, value in dockerfile_stages()[-1]:
        if name == "ENV":
            env.update(pair.split("=", 1) for pair in value.split())
    assert "SPENDGATE_ALLOWED_HOSTS" in env, "the image binds 0.0.0.0: it must name its hosts"
    cmd = image_default("CMD")
    hosts = allowed_hosts(load_config(None).server, flag(cmd, "--host"),
                          env["SPENDGATE_ALLOWED_HOSTS"])
    assert sorted(hosts) == sorted(LOOPBACK_NAMES)


def test_no_example_budget_can_be_escaped_by_a_header() -> None:
    for name, (_, config) in deploy_configs().items():
        if name in HEADER_BUDGETS_OK:
            continue
        projects = {k.project for k in config.keys or ()}
        for budget in config.budgets:
            if budget.project is None and budget.key is None:
                continue  # covers every call (of its model or upstream): no header changes that
            # With virtual keys the project comes from the key, never from a header.
            assert config.keys, f"{name}: budget {budget.name} selects by project without keys"
            assert budget.key is not None or budget.project in projects, \
                f"{name}: budget {budget.name}: no key gives project {budget.project!r}"
    assert {n for n in HEADER_BUDGETS_OK} <= set(deploy_configs())

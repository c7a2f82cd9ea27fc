"""The deployment files: Dockerfiles, Kubernetes manifests and the compose demo, checked offline.

No Docker engine or cluster runs here, so each file is checked with the tool that exists for
it: hadolint (from its PyPI wheel) for the Dockerfiles, the Kubernetes JSON schemas that
kubernetes-validate bundles for the manifests, the compose-spec schema that check-jsonschema
vendors for compose.yaml; then what no schema knows: the invariants ops rely on (non-root,
read-only root, probes on the admin paths, secrets by reference, one config path everywhere)
and that the files agree with each other and with ztproxy's configuration. The commands the
images run are run for real in tests/integration/test_image_layout.py.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ztproxy import cli
from ztproxy.config import load
from ztproxy.config.schema import Config
from ztproxy.config.values import parse_duration
from ztproxy.demo.sample_app import APP_PAGES
from ztproxy.grants.service import terms_by_route

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
KUBERNETES = REPO / "deploy" / "kubernetes"
COMPOSE = REPO / "deploy" / "compose"
BIN = Path(sys.executable).parent
# The oldest Kubernetes the manifests promise to work on, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
OCI_LABELS = ("title", "description", "version", "revision", "licenses")


# --- Dockerfiles ---------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def dockerfile_stages(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (continuations joined)."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base=base.strip(), name=name.strip() or None))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON (exec-form) argument list; shell form fails the test."""
    assert args.startswith("["), f"not exec form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value)
    return value


def image_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for match in re.finditer(r'(\w+)=("[^"]*"|\S+)', args):
            env[match.group(1)] = match.group(2).strip('"')
    return env


def image_command(path: Path = DOCKERFILE) -> list[str]:
    final = dockerfile_stages(path)[-1]
    return exec_form(final.last("ENTRYPOINT")) + exec_form(final.last("CMD"))


def healthcheck_command(path: Path = DOCKERFILE) -> list[str]:
    args = dockerfile_stages(path)[-1].last("HEALTHCHECK")
    _, _, command = args.partition(" CMD ")
    return exec_form(command.strip())


def hadolint(dockerfile: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    labels = [arg for name in ("title", "licenses")
              for arg in ("--require-label", f"org.opencontainers.image.{name}:text")]
    return subprocess.run(
        [str(BIN / "hadolint"), "--no-color", "--format", "json", "--failure-threshold", "style", *labels,
         str(dockerfile)],
        capture_output=True, text=True, timeout=60, cwd=cwd, env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, COMPOSE / "idp" / "Dockerfile"], ids=["ztproxy", "demo-idp"])
def test_hadolint_finds_nothing(dockerfile: Path, tmp_path: Path) -> None:
    result = hadolint(dockerfile, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_hadolint_reports_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\nCMD ztproxy run\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3013", "DL3002", "DL3025", "DL3042"} <= codes, codes


def test_the_image_is_multi_stage_on_a_pinned_slim_python() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert image == "python" and re.fullmatch(r"3\.1[1-9][.\w-]*-slim[\w-]*", tag), stage.base
    # The wheel is built in the first stage; the runtime gets the installed virtualenv only.
    assert any("pip wheel" in run for run in build.all("RUN"))
    assert final.all("COPY") == [f"--from={build.name} /opt/ztproxy /opt/ztproxy"]
    assert not any("pip" in run for run in final.all("RUN"))


def test_the_image_installs_the_locked_dependencies_with_their_hashes() -> None:
    build = dockerfile_stages(DOCKERFILE)[0]
    assert "requirements-image.lock ./" in build.all("COPY")
    installs = [run for run in build.all("RUN") if "pip install" in run]
    assert "--require-hashes -r requirements-image.lock" in installs[0]
    # ztproxy's own wheel adds nothing to what the lock installed; pip check: nothing is missing.
    assert "--no-deps /wheels/ztproxy-" in installs[-1] and "pip check" in installs[-1]


def test_the_image_runs_ztproxy_as_a_numeric_non_root_user() -> None:
    final = dockerfile_stages(DOCKERFILE)[-1]
    user = final.last("USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
    assert f"--uid {user.split(':')[0]} " in final.last("RUN")
    assert image_command() == ["ztproxy", "run", "-c", "/etc/ztproxy/config.yaml"]
    assert image_env(final)["ZTPROXY_CONFIG"] == "/etc/ztproxy/config.yaml"
    assert final.last("STOPSIGNAL") == "SIGTERM"
    assert set(final.last("EXPOSE").split()) == {"8080", "9090"}


def test_the_healthcheck_asks_healthz_on_the_admin_port() -> None:
    final = dockerfile_stages(DOCKERFILE)[-1]
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "ZTPROXY_HEALTHCHECK_URL" in command[2] and "status != 200" in command[2]
    assert image_env(final)["ZTPROXY_HEALTHCHECK_URL"] == "http://127.0.0.1:9090/healthz"


def test_the_image_has_oci_labels_and_bakes_in_no_secret() -> None:
    final = dockerfile_stages(DOCKERFILE)[-1]
    labels = " ".join(final.all("LABEL"))
    for name in OCI_LABELS:
        assert f"org.opencontainers.image.{name}=" in labels, name
    names = " ".join(final.all("ARG") + list(image_env(final)))
    assert not re.search(r"SECRET|PASSWORD|TOKEN|PRIVATE|_KEY\b", names, re.IGNORECASE), names
    for stage in dockerfile_stages(DOCKERFILE):
        for source in stage.all("COPY") + stage.all("ADD"):
            assert not re.search(r"\.pem|\.key|secret|\.env", source), source
    ignored = set((REPO / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "node_modules", "**/*.pem", "**/.env"} <= ignored


# --- Kubernetes ----------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))


def kubernetes_resources() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes` creates (the ConfigMap without its name hash)."""
    spec = kustomization()
    documents: list[dict[str, Any]] = []
    for name in spec["resources"]:
        documents += [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text(encoding="utf-8")) if doc]
    for generator in spec.get("configMapGenerator", []):
        data = {Path(file).name: (KUBERNETES / file).read_text(encoding="utf-8") for file in generator["files"]}
        documents.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                          "data": data})
    for document in documents:
        if document["kind"] != "Namespace":
            document["metadata"]["namespace"] = spec["namespace"]
    return documents


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for document in documents:
        if document["kind"] in WORKLOAD_KINDS:
            template = document["spec"]["template"]
            if document["kind"] == "CronJob":
                template = document["spec"]["jobTemplate"]["spec"]["template"]
            yield f"{document['kind']}/{document['metadata']['name']}", template["spec"]


def ztproxy_container() -> dict[str, Any]:
    deployment = find(kubernetes_resources(), "Deployment", "ztproxy")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "ztproxy")


def k8s_config() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES / "config.yaml").read_text(encoding="utf-8"))


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    documents = kubernetes_resources()
    assert {d["kind"] for d in documents} >= {"Namespace", "ServiceAccount", "Deployment", "Service", "ConfigMap",
                                              "PodDisruptionBudget", "NetworkPolicy", "StatefulSet"}
    for version in KUBERNETES_VERSIONS:
        for document in documents:
            kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_refuses_a_misspelt_or_mistyped_field() -> None:
    deployment = find(kubernetes_resources(), "Deployment", "ztproxy")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    spec = kustomization()
    # servicemonitor.yaml needs the Prometheus Operator's CRD; ingress-forward-auth.yaml is an
    # app's, in the app's namespace (tests/unit/test_calling_proxies.py checks it).
    optional = {"servicemonitor.yaml", "ingress-forward-auth.yaml"}
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "config.yaml"}
    assert set(spec["resources"]) == manifests - optional
    assert [g["files"] for g in spec["configMapGenerator"]] == [["config.yaml"]]
    assert [image["name"] for image in spec["images"]] == [ztproxy_container()["image"].partition(":")[0]]


def test_every_pod_is_non_root_read_only_and_unprivileged() -> None:
    specs = dict(pod_specs(kubernetes_resources()))
    assert set(specs) == {"Deployment/ztproxy", "StatefulSet/ztproxy-redis"}
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            where = f"{name} {container['name']}"
            assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context.get("privileged", False) is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_the_deployment_runs_the_image_command_with_probes_on_the_admin_port() -> None:
    documents = kubernetes_resources()
    deployment = find(documents, "Deployment", "ztproxy")
    assert deployment["spec"]["replicas"] >= 2
    container = ztproxy_container()
    config = k8s_config()
    args = container["args"]
    assert args[:3] == image_command()[1:]  # the image's CMD, then options
    assert args[3:] == ["--workers", "2"]
    image_user = dockerfile_stages(DOCKERFILE)[-1].last("USER")
    assert container["securityContext"]["runAsUser"] == int(image_user.split(":")[0])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": port_of(config["server"]["listen"]), "admin": port_of(config["server"]["admin_listen"])}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": {"path": "/healthz", "port": "admin"},
                      "livenessProbe": {"path": "/healthz", "port": "admin"},
                      "readinessProbe": {"path": "/readyz", "port": "admin"}}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    config_mount = mounts[args[2]]
    assert config_mount["subPath"] == "config.yaml" and config_mount["readOnly"] is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == kustomization()["configMapGenerator"][0]["name"]
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_termination_grace_outlasts_the_drain() -> None:
    server = k8s_config()["server"]
    drain_delay, grace = parse_duration(server["drain_delay"]), parse_duration(server["shutdown_grace"])
    # The pod keeps serving while it leaves the endpoints, before the listener closes.
    assert drain_delay >= 5
    spec = find(kubernetes_resources(), "Deployment", "ztproxy")["spec"]["template"]["spec"]
    # The supervisor of --workers N gives its workers drain_delay + shutdown_grace + 5 s.
    assert spec["terminationGracePeriodSeconds"] > drain_delay + grace + 5


def test_secrets_are_referenced_never_included() -> None:
    documents = kubernetes_resources()
    assert not [d for d in documents if d["kind"] == "Secret"]
    text = "\n".join((KUBERNETES / name).read_text(encoding="utf-8") for name in kustomization()["resources"])
    assert "stringData" not in text and not re.search(r"\bdata:\s*\n\s+\S+:\s+[A-Za-z0-9+/=]{20,}", text)
    deployment = find(documents, "Deployment", "ztproxy")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    container = ztproxy_container()
    assert "env" not in container  # every secret arrives as a file
    secret_files: dict[str, str] = {}  # path in the container -> secret name
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount["readOnly"] is True and "subPath" not in mount  # a rotated secret reaches the pod
        assert secret["defaultMode"] == 0o440
        for item in secret.get("items", []):
            secret_files[f"{mount['mountPath']}/{item['path']}"] = secret["secretName"]
        if "items" not in secret:
            secret_files[mount["mountPath"]] = secret["secretName"]
    config = k8s_config()
    referenced = {
        config["server"]["admin_token_file"], config["identity_providers"][0]["client_secret_file"],
        config["sessions"]["store_file"], config["sessions"]["cookie_secrets_file"], config["assertion"]["keys_dir"],
    }
    assert referenced == set(secret_files), "each secret the config reads is mounted, and only those"
    assert set(secret_files.values()) == {"ztproxy", "ztproxy-assertion-keys"}
    guide = (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    for path in referenced - {config["assertion"]["keys_dir"]}:
        assert f"--from-file={Path(path).name}=" in guide, f"deploy/README.md: how to create {path}"


def secret_values(redis_url: str) -> dict[str, str]:
    """A value for each file of the ztproxy Secret, as an operator would create them."""
    return {"oidc-client-secret": "s3cr3t-from-the-idp", "cookie-secrets": f"{'a' * 64}\n{'b' * 64}\n",
            "session-store-url": redis_url, "admin-token": "c" * 64}


def mounted_config(root: Path, *, redis_url: str = "redis://:redis-password@127.0.0.1:6379/0") -> Path:
    """The ConfigMap's config and the Secrets' files under ``root`` as the pod sees them at /."""
    config = (KUBERNETES / "config.yaml").read_text(encoding="utf-8").replace("/etc/ztproxy/", f"{root}/etc/ztproxy/")
    (root / "etc" / "ztproxy" / "secrets").mkdir(parents=True)
    path = root / "etc" / "ztproxy" / "config.yaml"
    path.write_text(config, encoding="utf-8")
    for name, value in secret_values(redis_url).items():
        (root / "etc" / "ztproxy" / "secrets" / name).write_text(value, encoding="utf-8")
    assert cli.main(["keys", "generate", "--dir", str(root / "etc" / "ztproxy" / "keys")]) == 0
    return path


def test_the_configmap_config_passes_ztproxy_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = mounted_config(tmp_path)
    assert cli.main(["check", "-c", str(path)]) == 0, capsys.readouterr().err
    config = load(path)
    assert config.sessions.cookie_secrets == ("a" * 64, "b" * 64)  # one per line, newest first
    assert config.sessions.store.startswith("redis://")
    assert config.assertion.keys_dir == str(tmp_path / "etc" / "ztproxy" / "keys")


def test_a_missing_secret_file_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = mounted_config(tmp_path)
    (tmp_path / "etc" / "ztproxy" / "secrets" / "admin-token").unlink()
    assert cli.main(["check", "-c", str(path)]) == 1
    assert "server.admin_token_file: cannot read" in capsys.readouterr().err


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_services_budget_and_monitor_select_the_ztproxy_pods() -> None:
    documents = kubernetes_resources()
    deployment = find(documents, "Deployment", "ztproxy")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    port_names = {port["name"] for port in ztproxy_container()["ports"]}
    proxy, admin = find(documents, "Service", "ztproxy"), find(documents, "Service", "ztproxy-admin")
    for service, expected in ((proxy, {"http"}), (admin, {"admin"})):
        assert selects(service["spec"]["selector"], pod_labels)
        assert {port["targetPort"] for port in service["spec"]["ports"]} == expected <= port_names
    budget = find(documents, "PodDisruptionBudget", "ztproxy")
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels)
    assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    monitor = yaml.safe_load((KUBERNETES / "servicemonitor.yaml").read_text(encoding="utf-8"))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert selects(monitor["spec"]["selector"]["matchLabels"], admin["metadata"]["labels"])
    assert not selects(monitor["spec"]["selector"]["matchLabels"], proxy["metadata"]["labels"])
    assert monitor["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s",
                                             "scrapeTimeout": "10s"}]


def test_network_policies_keep_upstreams_admin_and_redis_to_ztproxy() -> None:
    documents = kubernetes_resources()
    pod_labels = find(documents, "Deployment", "ztproxy")["spec"]["template"]["metadata"]["labels"]
    config = k8s_config()
    proxy = find(documents, "NetworkPolicy", "ztproxy")
    assert selects(proxy["spec"]["podSelector"]["matchLabels"], pod_labels)
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in proxy["spec"]["ingress"]}
    assert rules[port_of(config["server"]["listen"])] is None  # the proxy port: from anywhere
    assert rules[port_of(config["server"]["admin_listen"])] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    upstreams = find(documents, "NetworkPolicy", "ztproxy-upstreams")
    assert upstreams["spec"]["podSelector"]["matchLabels"] == {"ztproxy/upstream": "true"}
    assert upstreams["spec"]["policyTypes"] == ["Ingress"]
    [only] = upstreams["spec"]["ingress"]
    [source] = only["from"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": kustomization()["namespace"]}
    assert selects(source["podSelector"]["matchLabels"], pod_labels)
    redis = find(documents, "StatefulSet", "ztproxy-redis")
    redis_policy = find(documents, "NetworkPolicy", "ztproxy-redis")
    assert selects(redis_policy["spec"]["podSelector"]["matchLabels"], redis["spec"]["template"]["metadata"]["labels"])
    assert [r["from"] for r in redis_policy["spec"]["ingress"]] == [[{"podSelector": {"matchLabels": pod_labels}}]]
    # Redis asks for a password, from a Secret.
    redis_container = redis["spec"]["template"]["spec"]["containers"][0]
    assert "$(REDIS_PASSWORD)" in redis_container["args"]
    assert redis_container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "ztproxy-redis", "key": "password"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kubectl_kustomize_builds_what_the_tests_check() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert built.returncode == 0, built.stderr
    documents = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    names = {(d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])) for d in documents}
    assert names == {(d["kind"], d["metadata"]["name"]) for d in kubernetes_resources()}
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSIONS[0], strict=True)


# --- compose -------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))


def compose_config() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "ztproxy.yaml").read_text(encoding="utf-8"))


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_compose_{name}", COMPOSE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_compose_file_validates_against_the_compose_spec(tmp_path: Path) -> None:
    result = check_compose_schema(COMPOSE / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = compose()
    broken["services"]["ztproxy"]["read_onyl"] = True
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = check_compose_schema(tmp_path / "compose.yaml")
    assert result.returncode != 0 and "read_onyl" in result.stdout


def volume_target(service: dict[str, Any], volume: str) -> tuple[str, bool]:
    for entry in service["volumes"]:
        source, target, *mode = entry.split(":")
        if source == volume:
            return target, mode == ["ro"]
    raise AssertionError(f"{volume} is not mounted")


def test_compose_runs_two_hardened_replicas_of_the_image_command() -> None:
    services = compose()["services"]
    assert set(services) == {"init", "redis", "idp", "ztproxy", "lb", "app"}
    proxy = services["ztproxy"]
    assert proxy["deploy"]["replicas"] == 2
    assert ["ztproxy", *proxy["command"]] == image_command() and "entrypoint" not in proxy
    assert proxy["build"] == {"context": "../..", "dockerfile": "Dockerfile"}
    assert volume_target(proxy, "./ztproxy.yaml") == (image_command()[3], True)
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert not service["user"].startswith(("0:", "root")), name
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert published == {"idp": ["127.0.0.1:9000:9000"], "lb": ["127.0.0.1:8080:8080"]}


def test_compose_services_and_ztproxy_config_agree() -> None:
    services = compose()["services"]
    config = compose_config()
    init_demo = load_script("init_demo")
    public, issuer = urlsplit(config["server"]["public_url"]), urlsplit(config["identity_providers"][0]["issuer"])
    # Browsers and containers reach the load balancer and the IdP by the same *.localhost names.
    assert services["lb"]["networks"]["default"]["aliases"] == [public.hostname]
    assert services["idp"]["networks"]["default"]["aliases"] == [issuer.hostname]
    assert services["lb"]["ports"] == [f"127.0.0.1:{public.port}:{public.port}"]
    assert services["idp"]["ports"] == [f"127.0.0.1:{issuer.port}:{issuer.port}"]
    assert (config["server"]["public_url"], issuer.geturl()) == (init_demo.PUBLIC_URL, init_demo.ISSUER)
    nginx = (COMPOSE / "nginx.conf").read_text(encoding="utf-8")
    assert f"listen {public.port};" in nginx
    assert f"server ztproxy:{port_of(config['server']['listen'])} resolve;" in nginx
    assert urlsplit(config["sessions"]["store"]).hostname == "redis"
    app_env = services["app"]["environment"]
    assert app_env["DEMO_PUBLIC_URL"] == config["server"]["public_url"]
    assert {route["upstream"] for route in config["routes"]} == {f"http://app:{port_of(app_env['DEMO_APP_LISTEN'])}"}
    assert port_of(config["server"]["admin_listen"]) == 9090  # the image's HEALTHCHECK port
    server = config["server"]
    drain = parse_duration(server["drain_delay"]) + parse_duration(server["shutdown_grace"])
    assert parse_duration(services["ztproxy"]["stop_grace_period"]) > drain
    state, read_only = volume_target(services["ztproxy"], "demo-state")
    assert read_only and volume_target(services["init"], "demo-state") == (state, False)
    for path in (config["identity_providers"][0]["client_secret_file"], config["sessions"]["cookie_secrets_file"],
                 config["assertion"]["keys_dir"]):
        assert path.startswith(state + "/"), path
    assert services["init"]["entrypoint"][-1] == state
    idp_image = dockerfile_stages(COMPOSE / "idp" / "Dockerfile")[-1]
    assert exec_form(idp_image.last("CMD")) == [f"{state}/idp/idp-config.json"]
    assert idp_image.last("WORKDIR") + "/node_modules" == init_demo.IDP_NODE_MODULES
    assert exec_form(idp_image.last("ENTRYPOINT")) == ["node", idp_image.last("WORKDIR") + "/idp.mjs"]


def compose_config_with_state(tmp_path: Path) -> Path:
    """ztproxy.yaml reading the state init_demo.py writes (run here) in ``tmp_path``."""
    init_demo = load_script("init_demo")
    assert init_demo.main([str(tmp_path)]) == 0
    state = volume_target(compose()["services"]["ztproxy"], "demo-state")[0]
    path = tmp_path / "config.yaml"
    path.write_text((COMPOSE / "ztproxy.yaml").read_text(encoding="utf-8").replace(state + "/", f"{tmp_path}/"),
                    encoding="utf-8")
    return path


def idp_users_written(state: Path) -> dict[str, Any]:
    users: dict[str, Any] = json.loads((state / "idp" / "idp-users.json").read_text(encoding="utf-8"))
    return users


def test_compose_config_passes_ztproxy_check_with_the_state_init_writes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_demo = load_script("init_demo")
    path = compose_config_with_state(tmp_path)
    assert cli.main(["check", "-c", str(path)]) == 0, capsys.readouterr().err
    config = load(path)
    assert config.sessions.cookie_secrets == ((tmp_path / "cookie-secret").read_text(encoding="utf-8").strip(),)
    [provider] = config.identity_providers
    idp = json.loads((tmp_path / "idp" / "idp-config.json").read_text(encoding="utf-8"))
    required = re.search(r"const required = \[([^\]]*)\]", (REPO / "ztproxy/demo_idp/idp.mjs").read_text("utf-8"))
    assert required is not None
    assert set(re.findall(r"'(\w+)'", required.group(1))) <= set(idp)
    assert idp["issuer"] == provider.issuer and idp["exit_with_parent"] is False
    [client] = idp["clients"]
    assert (client["client_id"], client["client_secret"]) == (provider.client_id, provider.client_secret)
    assert client["redirect_uris"] == [f"{config.public_url}/.ztproxy/callback"]
    users = idp_users_written(tmp_path)
    assert sorted(users) == ["alice", "bob", "carol"] and users["bob"]["totp_secret"] and users["carol"]["totp_secret"]
    # A second run keeps every secret: sign-ins and bob's authenticator survive a restart.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert init_demo.main([str(tmp_path)]) == 0
    assert before == {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}



def approvers_of(config: Config, users: dict[str, Any]) -> dict[str, list[str]]:
    """Each route with a grant rule -> the IdP users who can decide its requests (group, second factor)."""
    return {route: sorted(name for name, user in users.items()
                          if terms.approver_groups & set(user["groups"])
                          and (user.get("totp_secret") or not terms.approval_mfa))
            for route, terms in terms_by_route(config).items()}


def test_the_portal_lists_only_pages_compose_serves_and_every_grant_has_an_approver(tmp_path: Path) -> None:
    config = load(compose_config_with_state(tmp_path))
    users = idp_users_written(tmp_path)
    served = {route.path for route in config.routes}
    assert set(APP_PAGES) <= served, set(APP_PAGES) - served  # the sample app's portal links to each
    approvers = approvers_of(config, users)
    assert approvers == {"ledger": ["carol"]}
    # Without carol (or her second factor) nobody could decide the ledger's requests: the check sees it.
    assert approvers_of(config, {name: user for name, user in users.items() if name != "carol"}) == {"ledger": []}
    assert approvers_of(config, {**users, "carol": {**users["carol"], "totp_secret": None}}) == {"ledger": []}

# --- systemd -------------------------------------------------------------------------------------


SYSTEMD = REPO / "deploy" / "systemd"
CREDENTIALS = "/run/credentials/ztproxy.service/"


def unit_values(name: str, key: str) -> list[str]:
    """Every value of ``key`` in a unit file (continuation lines joined)."""
    text = (SYSTEMD / name).read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.partition("=")[2].strip() for line in text.splitlines() if line.startswith(f"{key}=")]


def verify_units(directory: Path) -> subprocess.CompletedProcess[str]:
    units = sorted(str(p) for p in directory.iterdir())
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True,
                          timeout=60, check=False)


def copy_units(directory: Path) -> None:
    """The units, starting this environment's ztproxy (systemd-analyze checks the binary exists)."""
    directory.mkdir()
    for unit in list(SYSTEMD.glob("*.service")) + list(SYSTEMD.glob("*.timer")):
        text = unit.read_text(encoding="utf-8").replace("/usr/local/bin/ztproxy", str(BIN / "ztproxy"))
        (directory / unit.name).write_text(text, encoding="utf-8")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    copy_units(tmp_path / "units")
    result = verify_units(tmp_path / "units")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    broken = tmp_path / "units" / "ztproxy.service"
    broken.write_text(broken.read_text(encoding="utf-8").replace("Restart=", "Restrat="), encoding="utf-8")
    assert "Restrat" in verify_units(tmp_path / "units").stderr


def test_systemd_unit_and_config_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (SYSTEMD / "config.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    credentials = dict(value.split(":", 1) for value in unit_values("ztproxy.service", "LoadCredential"))
    credential_paths = set(re.findall(re.escape(CREDENTIALS) + r"[\w-]+", text))
    assert {CREDENTIALS + name for name in credentials} == credential_paths
    assert [cmd.split()[1:] for cmd in unit_values("ztproxy.service", "ExecStart")] == \
        [[*image_command()[1:], "--workers", "2"]]
    state_directory = unit_values("ztproxy.service", "StateDirectory")[0]
    assert config["assertion"]["keys_dir"] == f"/var/lib/{state_directory}/keys"
    server = config["server"]
    stop = parse_duration(unit_values("ztproxy.service", "TimeoutStopSec")[0])
    assert stop > parse_duration(server["drain_delay"]) + parse_duration(server["shutdown_grace"]) + 5
    [rotate] = unit_values("ztproxy-keys-rotate.service", "ExecStart")
    assert f"--dir {config['assertion']['keys_dir']} " in rotate
    assert unit_values("ztproxy-keys-rotate.service", "User") == unit_values("ztproxy.service", "User")
    # `ztproxy check` with the credentials, certificate and key directory in place.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth.corp.example")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    files = {"admin-token": "d" * 64, "oidc-client-secret": "from-the-idp", "cookie-secrets": "e" * 64 + "\n",
             "tls-key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode()}
    assert set(files) == set(credentials)
    (tmp_path / "credentials").mkdir()
    for credential, value in files.items():
        (tmp_path / "credentials" / credential).write_text(value, encoding="utf-8")
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    moved = (text.replace(CREDENTIALS, f"{tmp_path}/credentials/")
             .replace(server["tls"]["cert_file"], str(tmp_path / "cert.pem"))
             .replace(config["assertion"]["keys_dir"], str(tmp_path / "keys")))
    (tmp_path / "config.yaml").write_text(moved, encoding="utf-8")
    assert cli.main(["check", "-c", str(tmp_path / "config.yaml")]) == 0, capsys.readouterr().err

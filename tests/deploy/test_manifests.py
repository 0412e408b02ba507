"""The deployment files agree with the Kubernetes schemas, with the app, and with each other.

Kubernetes manifests (deploy/k8s/**/*.yaml) are validated offline against the schemas that the
kubernetes-validate package ships; the rest checks what a schema cannot: probe paths are real routes,
ports agree, every GRADIENT_* variable is a real setting with a value that parses, shutdown timings fit
in the grace period, server processes x compute workers x threads fit in the CPU limit and the workers'
memory caps in the memory limit, the GPU variant asks for a GPU per compute worker, Prometheus scrapes
the compose service, and the Dockerfile follows the image rules.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.api.workers._pool import STOP_TIMEOUT_S
from service.config import Settings
from service.main import create_app
from service.store import database_url

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS = DEPLOY / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"

# The oldest Kubernetes release the manifests are meant for, and the newest the package knows.
OLDEST_KUBERNETES = "1.29"

FRONT_MIB = 384
"""Memory left under the limit for each server process (about 250 MiB after its warm-up) and the fork
server its compute workers start from (about 130 MiB of its own), beside the workers' caps."""

KUBERNETES_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
DOCKER_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
"""Memory units: Kubernetes quantities (binary Ki, Mi, ...; decimal k, M, ...), and compose's (binary, any
case, with an optional trailing b)."""

Manifest = dict[str, Any]


def load_all(path: Path) -> list[Manifest]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert all(isinstance(doc, dict) for doc in documents), f"{path}: every document must be a mapping"
    return documents


def k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def manifests() -> list[tuple[Path, Manifest]]:
    return [(path, doc) for path in k8s_files() for doc in load_all(path)]


def of_kind(kind: str) -> list[tuple[Path, Manifest]]:
    return [(path, doc) for path, doc in manifests() if doc["kind"] == kind]


def label(path: Path, doc: Manifest) -> str:
    return f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}"


def deployments() -> list[tuple[Path, Manifest]]:
    return of_kind("Deployment")


DEPLOYMENTS = deployments()
DEPLOYMENT_IDS = [f"{path.relative_to(K8S)}:{doc['metadata']['name']}" for path, doc in DEPLOYMENTS]


def containers(deployment: Manifest) -> list[Manifest]:
    found: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    return found


def env_of(container: Manifest) -> dict[str, str]:
    """The container's environment, values taken from a Secret among the manifests read there."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            reference = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_value(reference["name"], reference["key"])
            continue
        assert "value" in item, f"{item['name']}: only literal values and Secrets' keys are checked here"
        assert isinstance(item["value"], str), f"{item['name']}: env values must be strings in YAML"
        env[item["name"]] = item["value"]
    return env


def secret_value(name: str, key: str) -> str:
    """A key of one of the manifests' Secrets (their values are in stringData)."""
    secrets = {doc["metadata"]["name"]: doc for _, doc in of_kind("Secret")}
    assert name in secrets, f"no Secret {name} among the manifests"
    data = secrets[name].get("stringData", {})
    assert key in data, f"the Secret {name} has no key {key} in stringData"
    value: str = data[key]
    return value


def gradient_env(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith("GRADIENT_")}


def settings_from(env: dict[str, str]) -> Settings:
    """The settings those GRADIENT_* variables give, as the service would read them (the ones they leave
    out at their defaults). Unknown variables are an error here, although Settings ignores them."""
    fields = {f"GRADIENT_{name.upper()}": name for name in Settings.model_fields}
    unknown = sorted(set(gradient_env(env)) - set(fields))
    assert not unknown, f"not settings of service.config.Settings: {unknown}"
    values = {fields[name]: value for name, value in gradient_env(env).items()}
    return Settings.model_validate(values)


def cpu_quantity(value: str | int | float) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_mib(value: str | int, *, docker: bool = False) -> float:
    """A memory quantity in MiB: Kubernetes' (2Gi, 512Mi, bytes) or, with ``docker``, compose's (2g, 512m)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value).strip())
    assert match, f"not a memory quantity: {value!r}"
    number, unit = float(match.group(1)), match.group(2)
    units = KUBERNETES_UNITS
    if docker:
        units, unit = DOCKER_UNITS, unit.lower()
        if len(unit) == 2 and unit.endswith("b"):
            unit = unit[0]
    assert unit in units, f"unknown memory unit in {value!r}"
    return number * units[unit] / 2**20


def routes() -> set[str]:
    app = create_app(Settings())
    paths = {path for route in app.routes if isinstance(path := getattr(route, "path", None), str)}
    return paths | set(app.openapi()["paths"])


@pytest.fixture(scope="module")
def app_routes() -> set[str]:
    return routes()


def iter_probes(container: Manifest) -> Iterator[tuple[str, Manifest]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, container[kind]


# ---- the files are there and parse --------------------------------------------------------------------------


def test_the_expected_files_exist() -> None:
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "StatefulSet", "Secret"} <= kinds
    assert COMPOSE.is_file() and PROMETHEUS.is_file() and DOCKERFILE.is_file()


# ---- Kubernetes schemas ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", k8s_files(), ids=lambda path: str(path.relative_to(K8S)))
def test_manifests_match_the_kubernetes_schemas(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    versions = sorted({OLDEST_KUBERNETES, kubernetes_validate.latest_version()})
    errors = []
    for doc in load_all(path):
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(part) for part in exc.path)
                errors.append(f"{label(path, doc)} against Kubernetes {version}: {where}: {exc.message}")
    assert not errors, "\n".join(errors)


# ---- the app's routes, ports and settings ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "deployment"), DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_probes_hit_real_routes_on_the_served_port(path: Path, deployment: Manifest, app_routes: set[str]) -> None:
    for container in containers(deployment):
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        served = settings_from(env_of(container)).port
        assert served in ports.values(), f"{label(path, deployment)}: GRADIENT_PORT {served} is no containerPort"
        probes = dict(iter_probes(container))
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind, probe in probes.items():
            get = probe["httpGet"]
            assert get["path"] in app_routes, f"{label(path, deployment)} {kind}: no route {get['path']}"
            port = ports.get(get["port"], get["port"])
            assert port == served, f"{label(path, deployment)} {kind}: port {get['port']} is not {served}"


@pytest.mark.parametrize(("path", "deployment"), DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_gradient_variables_are_settings_that_parse(path: Path, deployment: Manifest) -> None:
    for container in containers(deployment):
        env = env_of(container)
        assert gradient_env(env), f"{label(path, deployment)}: configured through no GRADIENT_* variable"
        assert set(env) == set(gradient_env(env)), "the service is configured through GRADIENT_* variables only"
        settings = settings_from(env)
        assert settings.host == "0.0.0.0", "a pod must listen on every interface"


def worker_stop_s(settings: Settings) -> float:
    """After the shutdown grace, how long the compute workers may take to exit before they are killed."""
    return STOP_TIMEOUT_S if settings.effective_compute_processes() else 0.0


@pytest.mark.parametrize(("path", "deployment"), DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_the_grace_period_covers_prestop_drain_and_shutdown(path: Path, deployment: Manifest) -> None:
    pod = deployment["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    for container in containers(deployment):
        settings = settings_from(env_of(container))
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        command = pre_stop.get("exec", {}).get("command", [])
        sleep = float(command[1]) if command[:1] == ["sleep"] else float(pre_stop.get("sleep", {}).get("seconds", 0))
        assert sleep > 0, f"{label(path, deployment)}: a preStop sleep lets endpoints drop the pod first"
        assert grace > settings.shutdown_grace_s
        needed = sleep + settings.drain_s + settings.shutdown_grace_s + worker_stop_s(settings)
        assert grace > needed, f"{label(path, deployment)}: grace {grace}s <= preStop+drain+shutdown+stop {needed}s"


def computing_threads(settings: Settings) -> int:
    """Threads computing at once: server processes x compute workers each x torch threads each."""
    return settings.workers * settings.effective_compute_processes() * settings.effective_torch_threads()


def worker_memory_mib(settings: Settings) -> int:
    """The most memory the compute workers may hold before they are replaced: the cap x their number."""
    return settings.worker_max_rss_mb * settings.effective_compute_processes() * settings.workers


@pytest.mark.parametrize(("path", "deployment"), DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_workers_times_threads_fit_the_cpu_limit(path: Path, deployment: Manifest) -> None:
    for container in containers(deployment):
        settings = settings_from(env_of(container))
        resources = container["resources"]
        limit = cpu_quantity(resources["limits"]["cpu"])
        assert cpu_quantity(resources["requests"]["cpu"]) <= limit
        assert "memory" in resources["requests"] and "memory" in resources["limits"]
        # Explicit processes and threads: their defaults count os.cpu_count(), in a pod the node's cores.
        where = label(path, deployment)
        assert settings.compute_processes != "auto", f"{where}: set GRADIENT_COMPUTE_PROCESSES explicitly"
        assert settings.effective_compute_processes() > 0, f"{where}: compute in worker processes"
        assert settings.torch_threads > 0, f"{where}: set GRADIENT_TORCH_THREADS explicitly"
        used = computing_threads(settings)
        assert used <= limit, f"{where}: {used} threads > CPU limit {limit}"
        assert used >= math.floor(limit), f"{where}: {used} threads leave CPUs idle"


@pytest.mark.parametrize(("path", "deployment"), DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_worker_memory_caps_fit_the_memory_limit(path: Path, deployment: Manifest) -> None:
    for container in containers(deployment):
        settings = settings_from(env_of(container))
        resources = container["resources"]
        limit = memory_mib(resources["limits"]["memory"])
        assert memory_mib(resources["requests"]["memory"]) <= limit
        where = label(path, deployment)
        assert settings.worker_max_rss_mb > 0, f"{where}: set GRADIENT_WORKER_MAX_RSS_MB under the memory limit"
        needed = worker_memory_mib(settings) + settings.workers * FRONT_MIB
        assert needed <= limit, f"{where}: workers' caps and fronts need {needed} MiB > memory limit {limit:g} MiB"


@pytest.mark.parametrize(("path", "deployment"), DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_pods_run_as_the_images_non_root_user(path: Path, deployment: Manifest) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_user().split(":")[0])
    for container in containers(deployment):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_gpu_variant_asks_for_one_gpu_per_pod() -> None:
    gpu = [(path, doc) for path, doc in deployments() if "nvidia.com/gpu" in json.dumps(doc)]
    assert gpu, "no Deployment asks for nvidia.com/gpu"
    for path, deployment in gpu:
        for container in containers(deployment):
            resources = container["resources"]
            assert int(resources["limits"]["nvidia.com/gpu"]) == 1, label(path, deployment)
            settings = settings_from(env_of(container))
            assert settings.device.startswith("cuda"), f"{label(path, deployment)}: GRADIENT_DEVICE is not cuda"
            assert settings.workers == 1, "one server process, whose compute workers share out the GPUs"
            gpus = int(resources["limits"]["nvidia.com/gpu"])
            processes = settings.effective_compute_processes()
            assert processes == gpus, f"{label(path, deployment)}: {processes} compute workers for {gpus} GPUs"
    cpu = [(path, doc) for path, doc in deployments() if (path, doc) not in gpu]
    assert cpu and all("nvidia.com/gpu" not in json.dumps(doc) for _, doc in cpu)


def test_services_hpa_and_pdbs_select_their_deployments() -> None:
    by_name = {doc["metadata"]["name"]: doc for _, doc in deployments() + of_kind("StatefulSet")}
    for path, doc in of_kind("Service") + of_kind("PodDisruptionBudget"):
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        matched = [
            dep for dep in by_name.values() if selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"{label(path, doc)} selects {len(matched)} Deployments"
        if doc["kind"] == "Service":
            container_ports = {p["name"] for c in containers(matched[0]) for p in c["ports"]}
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in container_ports, f"{label(path, doc)}: no port {port['targetPort']}"
    for path, doc in of_kind("HorizontalPodAutoscaler"):
        target = doc["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in by_name, label(path, doc)
        assert by_name[target["name"]]["kind"] == "Deployment", label(path, doc)
        assert doc["spec"]["minReplicas"] >= 2, "a PodDisruptionBudget needs two pods to let one go"


def test_prometheus_annotations_name_the_metrics_route(app_routes: set[str]) -> None:
    assert "/metrics" in app_routes
    for path, deployment in deployments():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/path", "/metrics") in app_routes, label(path, deployment)
        for container in containers(deployment):
            assert annotations["prometheus.io/port"] == str(settings_from(env_of(container)).port)


# ---- compose and Prometheus ------------------------------------------------------------------------------------


def compose() -> Manifest:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_compose_service_settings_parse_and_ports_agree() -> None:
    service = compose()["services"]["gradient-service"]
    env = {name: str(value) for name, value in service["environment"].items()}
    settings = settings_from(env)
    published = {int(str(port).rsplit(":", 1)[-1]) for port in service["ports"]}
    assert settings.port in published
    assert settings.compute_processes != "auto" and settings.torch_threads > 0, "explicit: the host's cores"
    assert computing_threads(settings) <= float(service["cpus"])
    assert settings.worker_max_rss_mb > 0
    assert worker_memory_mib(settings) + settings.workers * FRONT_MIB <= memory_mib(service["mem_limit"], docker=True)
    assert service["build"]["context"] == ".." and service["build"]["dockerfile"] == "Dockerfile"
    stop = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert stop and int(stop.group(1)) > settings.drain_s + settings.shutdown_grace_s + worker_stop_s(settings)


def test_prometheus_scrapes_the_compose_service(app_routes: set[str]) -> None:
    services = compose()["services"]
    service = services["gradient-service"]
    port = settings_from({k: str(v) for k, v in service["environment"].items()}).port
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["gradient-service"]
    assert job.get("metrics_path", "/metrics") in app_routes
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"gradient-service:{port}"]


# ---- Dockerfile ------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(index for index, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def dockerfile_user() -> str:
    users = [arguments for instruction, arguments in final_stage() if instruction == "USER"]
    assert users, "the final stage sets no USER"
    return users[-1]


def test_dockerfile_has_a_base_image_argument_and_several_stages() -> None:
    instructions = dockerfile_instructions()
    first_from = next(index for index, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    global_args = [arguments for instruction, arguments in instructions[:first_from] if instruction == "ARG"]
    assert any(re.fullmatch(r"BASE_IMAGE=python:3\.1\d+-slim\S*", arg) for arg in global_args), global_args
    froms = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    assert len(froms) >= 2
    assert froms[-1].startswith("${BASE_IMAGE}")
    all_args = " ".join(arguments for instruction, arguments in instructions if instruction == "ARG")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in all_args


def test_dockerfile_final_stage_runs_gradient_service_as_non_root() -> None:
    stage = final_stage()
    user = dockerfile_user()
    assert re.fullmatch(r"\d+(:\d+)?", user) and int(user.split(":")[0]) != 0, "USER must be a numeric non-root id"
    cmd = [json.loads(arguments) for instruction, arguments in stage if instruction == "CMD"]
    assert cmd and cmd[-1] == ["gradient-service"], "exec-form CMD, so that the server is PID 1 and gets SIGTERM"
    assert not any(instruction == "ENTRYPOINT" for instruction, _ in stage)
    healthcheck = [arguments for instruction, arguments in stage if instruction == "HEALTHCHECK"]
    assert healthcheck and "/healthz" in healthcheck[-1]
    env = " ".join(arguments for instruction, arguments in stage if instruction == "ENV")
    assert "GRADIENT_HOST=0.0.0.0" in env
    names = {word.split("=")[0] for word in shlex.split(env)}
    assert {name for name in names if name.startswith("GRADIENT_")} <= {
        f"GRADIENT_{field.upper()}" for field in Settings.model_fields
    }


def test_dockerfile_final_stage_has_no_compilers_pip_or_tests() -> None:
    stage = final_stage()
    runs = " ".join(arguments for instruction, arguments in stage if instruction == "RUN")
    assert not re.search(r"apt-get|pip |build-essential|gcc", runs)
    copies = [arguments for instruction, arguments in stage if instruction in {"COPY", "ADD"}]
    assert all(arguments.startswith("--from=") for arguments in copies), "the runtime takes files from stages only"
    assert not any("tests" in arguments for arguments in copies)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored or "tests" in ignored, ".dockerignore keeps tests out of the build context"


# ---- the saved formulas' database ------------------------------------------------------------------------------


def test_every_deployment_uses_the_postgres_statefulset() -> None:
    """Every replica reads the same PostgreSQL: its URL comes from the Secret whose password the
    StatefulSet's server is given, and names the headless Service, its port, user and database."""
    [(_, statefulset)] = of_kind("StatefulSet")
    services = {doc["metadata"]["name"]: doc for _, doc in of_kind("Service")}
    pod = statefulset["spec"]["template"]["spec"]
    [server] = pod["containers"]
    assert server["image"].startswith("postgres:"), "the official image"
    server_env = env_of(server)
    service = services[statefulset["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in server["volumeMounts"]}
    assert server_env["PGDATA"].startswith(mounts[next(iter(claims))] + "/"), "the data lives on the claimed volume"
    assert any(
        "pg_isready" in probe["exec"]["command"] for probe in (server["readinessProbe"], server["livenessProbe"])
    )
    [port] = service["spec"]["ports"]
    for path, deployment in deployments():
        for container in containers(deployment):
            url = make_url(database_url(settings_from(env_of(container)).database_url, ""))
            where = label(path, deployment)
            assert url.drivername == "postgresql+psycopg", f"{where}: GRADIENT_DATABASE_URL is not PostgreSQL's"
            assert (url.host, url.port) == (service["metadata"]["name"], port["port"]), where
            assert url.username == server_env["POSTGRES_USER"] and url.database == server_env["POSTGRES_DB"], where
            assert url.password == server_env["POSTGRES_PASSWORD"], f"{where}: the Secret's two keys disagree"


def test_compose_runs_postgres_for_the_service() -> None:
    services = compose()["services"]
    service, postgres = services["gradient-service"], services["postgres"]
    assert postgres["image"].startswith("postgres:") and "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    environment = {name: str(value) for name, value in service["environment"].items()}
    settings = settings_from(environment)
    server = {name: str(value) for name, value in postgres["environment"].items()}
    url = make_url(database_url(settings.database_url, settings.data_dir))
    assert url.drivername == "postgresql+psycopg" and url.host == "postgres"
    assert url.username == server["POSTGRES_USER"] and url.database == server["POSTGRES_DB"]
    assert url.password == server["POSTGRES_PASSWORD"], "the same password (or the same variable) on both sides"
    volumes = compose()["volumes"]
    data = [volume for volume in postgres["volumes"] if volume.endswith(":/var/lib/postgresql/data")]
    assert data and data[0].split(":")[0] in volumes, "the database lives on a named volume"
    # The service's root is read-only: its data directory (SQLite, were the URL emptied) is a volume.
    assert service["read_only"] is True
    mounted = {volume.split(":")[1] for volume in service["volumes"]}
    assert settings.data_dir in mounted

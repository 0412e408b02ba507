"""The KServe InferenceService example (deploy/kserve/inferenceservice.yaml), checked offline.

No package carries KServe's CRD schema (the kserve SDK on PyPI ships generated models, no CRD, and
would pull in gRPC, pandas and the Kubernetes client), so it is checked in two parts:

- the InferenceService around the predictor, against ``INFERENCE_SERVICE``: a JSON schema written
  from KServe's v1beta1 API types (github.com/kserve/kserve, pkg/apis/serving/v1beta1:
  ``InferenceServiceSpec`` with its ``predictor``; ``ComponentExtensionSpec`` in component.go with
  ``scaleMetric`` one of cpu, memory, concurrency, rps and replicas at least 0; the name pattern
  ``IsvcNameFmt`` of its validation);
- the predictor's pod, against the real Kubernetes schemas (kubernetes-validate): a custom
  predictor is a ``corev1.PodSpec`` inlined (``CustomPredictor`` in predictor_custom.go), so
  everything but the component fields above must be a valid PodSpec;

then what KServe and the service themselves require: the protocol in the first container's
``PROTOCOL`` variable (v1 or v2: ``validateCustomProtocol``; v2 here), probes on real /v2 routes
on the served port, and GRADIENT_* variables that are settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.test_manifests import OLDEST_KUBERNETES, routes, settings_from

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "inferenceservice.yaml"

COMPONENT_EXTENSION: dict[str, Any] = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 1},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
}
"""``ComponentExtensionSpec``'s fields this example may use; the predictor's other keys are its PodSpec."""

INFERENCE_SERVICE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["predictor"],
            "additionalProperties": False,
            "properties": {
                "predictor": {
                    "type": "object",
                    "required": ["containers"],
                    "properties": {**COMPONENT_EXTENSION, "containers": {"type": "array", "minItems": 1}},
                }
            },
        },
    },
}


def load() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return manifest


def pod_spec(predictor: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in predictor.items() if key not in COMPONENT_EXTENSION}


def test_the_inference_service_matches_kserves_fields() -> None:
    manifest = load()
    jsonschema.validate(manifest, INFERENCE_SERVICE)
    predictor = manifest["spec"]["predictor"]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]  # validateReplicas


def test_the_schema_refuses_what_kserve_refuses() -> None:
    """The check can fail: each of these breaks a rule KServe's types or validation state."""
    good = load()
    for path, value in (
        (("metadata", "name"), "Gradient_Service"),
        (("spec", "predictor", "scaleMetric"), "latency"),
        (("spec", "predictor", "minReplicas"), -1),
        (("kind",), "Deployment"),
    ):
        broken = yaml.safe_load(yaml.safe_dump(good))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, INFERENCE_SERVICE)


def test_the_predictor_is_a_valid_pod_spec() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    manifest = load()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": manifest["metadata"],
        "spec": pod_spec(manifest["spec"]["predictor"]),
    }
    for version in sorted({OLDEST_KUBERNETES, kubernetes_validate.latest_version()}):
        kubernetes_validate.validate(pod, version, strict=True)
    broken = {**pod, "spec": {**pod["spec"], "containers": [{**pod["spec"]["containers"][0], "port": 8000}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kserve_sees_a_v2_predictor_probed_on_the_protocols_routes() -> None:
    (container,) = load()["spec"]["predictor"]["containers"]  # one container: Knative serves one port
    assert container["name"] == "kserve-container"
    env = {item["name"]: item for item in container["env"]}
    assert env["PROTOCOL"]["value"] == "v2"
    literal = {name: item["value"] for name, item in env.items() if "value" in item and name != "PROTOCOL"}
    settings = settings_from(literal)
    assert settings.host == "0.0.0.0"
    assert [port["containerPort"] for port in container["ports"]] == [settings.port]
    assert set(env) - set(literal) == {"PROTOCOL", "GRADIENT_DATABASE_URL"}  # the URL comes from a Secret
    assert env["GRADIENT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert settings.data_dir in mounts, "the SQLite database needs a writable directory (the root is read-only)"
    known = routes()
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    for kind, get in probes.items():
        assert get["path"] in known, f"{kind}: no route {get['path']}"
        assert get["port"] == settings.port

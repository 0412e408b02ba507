"""Client generators against the service's own /openapi.json: openapi-python-client reads every
schema and endpoint, and the client it writes calls a real server and parses the answers into its
models; the TypeScript types openapi-typescript writes compile under ``tsc --strict``.

The tensor types are named components (Tensor, EncodedTensor, TensorShape, ...) referenced by $ref,
with every array's items given: inline, with bare ``{"type": "array"}`` inner arrays, they cost
openapi-python-client every request and response that carries a tensor."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from service.api.schemas import TENSOR_SCHEMA
from tests.conftest import AppClient
from tests.e2e.serving import running_server

PACKAGE = "generated_gradient_client"
"""The generated Python client's package (a name nothing else imports)."""

NODE_PACKAGES = ("openapi-typescript@7", "typescript@5")


# --- openapi-python-client ----------------------------------------------------------------------


def generate_python_client(document: dict[str, Any], where: Path) -> Path:
    """Run openapi-python-client over ``document``; the directory holding the generated package.
    Fails on anything the generator says besides that it is generating: it reports each schema and
    endpoint it cannot read (and leaves them out) as a warning, yet exits 0."""
    cli = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("openapi-python-client is not installed (it is in the test extra)")
    spec = where / "openapi.json"
    spec.write_text(json.dumps(document))
    config = where / "generator.json"
    # No post hooks: ruff formatting the output is no concern here, and a missing ruff is a warning.
    config.write_text(json.dumps({"package_name_override": PACKAGE, "post_hooks": []}))
    output = where / "python-client"
    done = subprocess.run(
        [cli, "generate", "--path", str(spec), "--output-path", str(output), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    said = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, said
    remarks = [line for line in said.splitlines() if line.strip() and not line.startswith("Generating ")]
    assert not remarks, said
    return output


def test_openapi_python_client_reads_every_schema_and_endpoint(client: AppClient, tmp_path: Path) -> None:
    document = client.get("/openapi.json").json()
    package = generate_python_client(document, tmp_path) / PACKAGE
    operations = {
        re.sub("_+", "_", operation["operationId"])
        for path in document["paths"].values()
        for operation in path.values()
    }
    generated = {module.stem for module in (package / "api").rglob("*.py") if module.stem != "__init__"}
    assert generated == operations
    models = (package / "models" / "__init__.py").read_text()
    for name in ("Tensor", "EncodedTensor", "TensorShape", "NonFinite", "DerivativeOut", "Point"):
        assert name in document["components"]["schemas"], name
    for model in ("EncodedTensor", "TensorShape", "NonFinite", "DifferentiateResponse", "ActivationResponse"):
        assert f"import {model}\n" in models, model


def test_the_openapi_tensor_is_the_one_the_catalogs_show(client: AppClient) -> None:
    """The named components and the inline schema of a tensor param in the catalogs (GET /v1/losses)
    describe the same values, titles and descriptions aside."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return inline(schemas[node["$ref"].rsplit("/", 1)[1]])
        return {
            key: inline(value)
            for key, value in node.items()
            if key not in ("title", "description") and (key, value) != ("items", {})  # items: {} is any
        }

    assert inline(schemas["Tensor"]) == inline(TENSOR_SCHEMA)
    losses = client.get("/v1/losses").json()["losses"]
    tensor_params = [
        schema["anyOf"][0]
        for loss in losses
        for name, schema in loss["params"]["properties"].items()
        if name == "pos_weight"
    ]
    assert tensor_params == [TENSOR_SCHEMA]


@pytest.fixture(scope="module")
def generated_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ModuleType]]:
    """A real server, and the Python client generated from its /openapi.json, imported."""
    where = tmp_path_factory.mktemp("generated")
    with running_server(where / "server.log", GRADIENT_ACCESS_LOG="false") as (base, *_):
        document = httpx.get(f"{base}/openapi.json", timeout=30).json()
        search_path = str(generate_python_client(document, where))
        sys.path.insert(0, search_path)
        importlib.invalidate_caches()
        try:
            yield base, importlib.import_module(PACKAGE)
        finally:
            sys.path.remove(search_path)
            for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
                del sys.modules[name]


@pytest.mark.e2e
def test_the_generated_python_client_differentiates_on_a_real_server(
    generated_client: tuple[str, ModuleType],
) -> None:
    base, package = generated_client
    models = importlib.import_module(f"{PACKAGE}.models")
    differentiate = importlib.import_module(f"{PACKAGE}.api.expressions.differentiate_expression_v1_differentiate_post")
    with package.Client(base_url=base, timeout=httpx.Timeout(60)) as api:
        inputs = models.DifferentiateRequestInputs()
        inputs["x"] = [1.0, 2.0]
        request = models.DifferentiateRequest(
            expression="sum(x ** 2)",
            inputs=inputs,
            derivatives=[
                models.DifferentiateRequestDerivativesItem.GRAD,
                models.DifferentiateRequestDerivativesItem.HESSIAN,
            ],
            dtype=models.DifferentiateRequestDtype.FLOAT64,
        )
        response = differentiate.sync_detailed(client=api, body=request)
        assert response.status_code == 200, response.content
        result = response.parsed
        assert isinstance(result, models.DifferentiateResponse)
        assert result.value == 5.0
        assert result.grad["x"] == [2.0, 4.0]
        assert result.hessian["x"]["x"] == [[2.0, 0.0], [0.0, 2.0]]
        assert result.meta.dtype == "float64"

        # An encoded tensor in, encoded tensors out: parsed into the EncodedTensor model.
        encoded = models.EncodedTensor(
            shape=[2], dtype=models.EncodedTensorDtype.FLOAT64, base64="AAAAAAAA8D8AAAAAAAAAQA=="
        )
        inputs = models.DifferentiateRequestInputs()
        inputs["x"] = encoded
        request = models.DifferentiateRequest(
            expression="sum(x ** 2)",
            inputs=inputs,
            dtype=models.DifferentiateRequestDtype.FLOAT64,
            encoding=models.DifferentiateRequestEncoding.BASE64,
        )
        result = differentiate.sync(client=api, body=request)
        assert isinstance(result, models.DifferentiateResponse)
        assert isinstance(result.grad["x"], models.EncodedTensor)
        assert (result.grad["x"].shape, result.grad["x"].dtype) == ([2], models.EncodedTensorDtype.FLOAT64)
        assert result.grad["x"].base64 == "AAAAAAAAAEAAAAAAAAAQQA=="  # [2.0, 4.0]

        # A dry run's shapes: parsed into the TensorShape model.
        request = models.DifferentiateRequest(expression="sum(x ** 2)", inputs=inputs, dry_run=True)
        result = differentiate.sync(client=api, body=request)
        assert isinstance(result, models.DifferentiateResponse)
        assert isinstance(result.value, models.TensorShape)
        assert (result.value.shape, result.grad["x"].shape) == ([], [2])
        assert result.cost is not None and result.cost.flops > 0

        # An error answer: parsed into ErrorBody.
        response = differentiate.sync_detailed(client=api, body=models.DifferentiateRequest(expression="sum(("))
        assert response.status_code == 400
        assert isinstance(response.parsed, models.ErrorBody)


@pytest.mark.e2e
def test_the_generated_python_client_evaluates_an_activation_on_a_real_server(
    generated_client: tuple[str, ModuleType],
) -> None:
    base, package = generated_client
    models = importlib.import_module(f"{PACKAGE}.models")
    activation = importlib.import_module(f"{PACKAGE}.api.activations.activation_v1_activations_name_post")
    with package.Client(base_url=base, timeout=httpx.Timeout(60)) as api:
        request = models.ActivationRequest(
            input_=[-1.0, models.NonFinite.NAN, 2.0], second_order=True, tangent=[1.0, 1.0, 1.0]
        )
        response = activation.sync_detailed(models.ActivationV1ActivationsNamePostName.RELU, client=api, body=request)
        assert response.status_code == 200, response.content
        result = response.parsed
        assert isinstance(result, models.ActivationResponse)
        assert result.output == [0.0, models.NonFinite.NAN, 2.0]
        assert isinstance(result.output[1], models.NonFinite)
        assert result.grad == [0.0, 1.0, 1.0]
        assert result.grad2 == [0.0, 0.0, 0.0]
        assert result.jacobian is None
        assert result.jvp == [0.0, 1.0, 1.0]
        assert result.meta.device == "cpu"


# --- openapi-typescript -------------------------------------------------------------------------

USAGE_TS = """\
import type { components, paths } from "./schema";

type Differentiate = paths["/v1/differentiate"]["post"];
type DifferentiateRequest = Differentiate["requestBody"]["content"]["application/json"];
type DifferentiateResponse = Differentiate["responses"][200]["content"]["application/json"];
type Tensor = components["schemas"]["Tensor"];
type DerivativeOut = components["schemas"]["DerivativeOut"];

const nested: Tensor = [[1.0, "NaN"], [2.0, 3.0]];
const encoded: Tensor = { shape: [2], dtype: "float64", base64: "AAAAAAAA8D8AAAAAAAAAQA==" };
export const request: DifferentiateRequest = {
  expression: "sum(x ** 2) + sum(y)",
  inputs: { x: nested, y: encoded, z: "Infinity", w: 2.5 },
  derivatives: ["grad", "hessian"],
};

// @ts-expect-error: a tensor's only strings are the non-finite values
export const notATensor: Tensor = "1.5";
// @ts-expect-error: float16 is no wire dtype
export const badDtype: Tensor = { shape: [1], dtype: "float16", base64: "AAA=" };
// @ts-expect-error: the derivatives are named
export const badRequest: DifferentiateRequest = { expression: "x", derivatives: ["laplacian"] };

function isShape(out: DerivativeOut): out is components["schemas"]["TensorShape"] {
  return typeof out === "object" && !Array.isArray(out) && !("base64" in out);
}

export function gradient(response: DifferentiateResponse, name: string): Tensor | undefined {
  const grad = response.grad?.[name];
  return grad === undefined || isShape(grad) ? undefined : grad;
}

export const elapsed = (response: DifferentiateResponse): number => response.meta.elapsed_ms;
"""
"""Uses the generated types for a differentiate request and response; the ``@ts-expect-error``
lines fail the compile unless the types really refuse what they should."""


def node_tools(config: pytest.Config) -> Path:
    """openapi-typescript and typescript, installed with npm once into a cache directory (pytest's,
    or ~/.cache without it) and reused: the ``node_modules/.bin`` holding their commands."""
    cache: pytest.Cache | None = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if cache is not None:
        root = cache.mkdir("openapi-typescript")
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gradient-service"
        root.mkdir(parents=True, exist_ok=True)
    tools = root / re.sub(r"[^\w.@-]", "_", "+".join(NODE_PACKAGES))
    if not (tools / "node_modules" / ".bin" / "tsc").exists():
        npm = shutil.which("npm")
        assert npm is not None
        staging = Path(tempfile.mkdtemp(prefix="installing-", dir=root))
        done = subprocess.run(
            [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", "--loglevel=error", *NODE_PACKAGES],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.skip(f"npm could not install {' '.join(NODE_PACKAGES)}: {(done.stdout + done.stderr)[-1500:]}")
        try:
            staging.rename(tools)  # whole, or not at all: another run may be installing too
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return tools / "node_modules" / ".bin"


def run_node_tool(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    return said


def test_openapi_typescript_types_compile_strictly(
    client: AppClient, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for openapi-typescript and tsc")
    bin_dir = node_tools(pytestconfig)
    (tmp_path / "openapi.json").write_text(json.dumps(client.get("/openapi.json").json()))
    generator = [str(bin_dir / "openapi-typescript"), "openapi.json", "-o"]
    # As docs/api/meta.md advises (fields with defaults stay optional in request types), and as is.
    for said in (
        run_node_tool([*generator, "schema.d.ts", "--default-non-nullable", "false"], tmp_path),
        run_node_tool([*generator, "schema-defaults.d.ts"], tmp_path),
    ):
        assert not re.search(r"warn|error", said, re.IGNORECASE), said
    (tmp_path / "usage.ts").write_text(USAGE_TS)
    run_node_tool(
        [str(bin_dir / "tsc"), "--noEmit", "--strict", "--target", "es2022", "usage.ts", "schema-defaults.d.ts"],
        tmp_path,
    )

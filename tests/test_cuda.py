"""The same results on a GPU; skipped cleanly where CUDA is absent."""

from __future__ import annotations

import pytest
import torch

from service.compute.registry import OpSpec, Sample
from tests.compute.test_activations import CASES, sample_input
from tests.conftest import AppClient
from tests.helpers import from_wire

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_activation_on_cuda_matches_cpu(client: AppClient, spec: OpSpec, sample: Sample) -> None:
    x = sample_input(sample)
    body = {
        "input": x.tolist(),
        "params": dict(sample.params),
        "dtype": "float64",
        "second_order": spec.elementwise,
    }
    on_gpu = client.post(f"/v1/activations/{spec.name}", json={**body, "device": "cuda"}).json()
    on_cpu = client.post(f"/v1/activations/{spec.name}", json={**body, "device": "cpu"}).json()
    assert on_gpu["meta"]["device"].startswith("cuda")
    for key in ("output", "grad", "grad2"):
        if on_cpu[key] is not None:
            torch.testing.assert_close(from_wire(on_gpu[key]), from_wire(on_cpu[key]))

"""A 1,000,000-element float32 sigmoid request, end to end over HTTP, against the obvious handler.

Run: .venv/bin/python -m bench.large_requests [--elements N] [--repeats R]
Prints the median seconds per request for each variant and the ratios
(baseline JSON time / our time). Both servers run at once, one uvicorn worker each.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import statistics
import time
import urllib.parse

import orjson
import torch

from bench.servers import uvicorn_server


def timed_post(base: str, path: str, body: bytes, repeats: int) -> tuple[float, bytes]:
    """Median seconds from sending the request to having read the whole response."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=600)
    times, content = [], b""
    for _ in range(repeats):
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        content = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"{base}{path} answered {response.status}: {content[:300]!r}")
    connection.close()
    return statistics.median(times), content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--elements", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    values = torch.randn(args.elements, generator=torch.Generator().manual_seed(0))
    json_body = orjson.dumps({"input": values.tolist()})
    encoded = {
        "shape": [args.elements],
        "dtype": "float32",
        "base64": base64.b64encode(values.numpy().tobytes()).decode(),
    }
    base64_body = orjson.dumps({"input": encoded, "encoding": "base64"})
    print(
        f"{args.elements} float32 elements; JSON body {len(json_body) / 1e6:.1f} MB, "
        f"base64 body {len(base64_body) / 1e6:.1f} MB; median of {args.repeats}"
    )

    env = {"GRADIENT_MAX_BODY_BYTES": str(256 * 1024 * 1024)}
    with (
        uvicorn_server("bench.baseline_app:app") as baseline,
        uvicorn_server("service.main:app", env=env, ready_path="/readyz") as ours,
    ):
        url = "/v1/activations/sigmoid"
        timed_post(ours, url, json_body, 1)  # warm both paths once
        timed_post(ours, url, base64_body, 1)
        base_s, base_out = timed_post(baseline, url, json_body, args.repeats)
        typed_s, _ = timed_post(baseline, "/typed/sigmoid", json_body, args.repeats)
        json_s, json_out = timed_post(ours, url, json_body, args.repeats)
        b64_s, b64_out = timed_post(ours, url, base64_body, args.repeats)

    expected = torch.tensor(orjson.loads(base_out)["output"], dtype=torch.float32)
    got_json = torch.tensor(orjson.loads(json_out)["output"], dtype=torch.float32)
    got_b64 = torch.frombuffer(
        bytearray(base64.b64decode(orjson.loads(b64_out)["output"]["base64"])), dtype=torch.float32
    )
    assert torch.equal(expected, got_json) and torch.equal(expected, got_b64), "results differ"

    rows = [
        ("baseline: obvious FastAPI handler, JSON", base_s),
        ("baseline with a response model, JSON", typed_s),
        ("gradient-service, JSON in and out", json_s),
        ("gradient-service, base64 in and out", b64_s),
    ]
    for label, seconds in rows:
        print(
            f"{label:42s} {seconds:8.3f} s   {base_s / seconds:7.1f}x   "
            f"(vs response-model baseline {typed_s / seconds:6.1f}x)"
        )


if __name__ == "__main__":
    main()

import time, base64, statistics, subprocess, sys
import torch, orjson
from bench.servers import uvicorn_server
from bench.large_requests import timed_post
if __name__ == "__main__":
    values = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    enc = {"shape": [1_000_000], "dtype": "float32", "base64": base64.b64encode(values.numpy().tobytes()).decode()}
    b64 = orjson.dumps({"input": enc, "encoding": "base64"})
    js = orjson.dumps({"input": values.tolist()})
    for arg in sys.argv[1:]:
        procs, nice = arg.split(",")
        env = {"GRADIENT_MAX_BODY_BYTES": str(256 * 1024 * 1024), "GRADIENT_COMPUTE_PROCESSES": procs, "GRADIENT_FRONT_NICE": nice}
        with uvicorn_server("service.main:app", env=env, ready_path="/readyz") as ours:
            timed_post(ours, "/v1/activations/sigmoid", b64, 3)
            s, out = timed_post(ours, "/v1/activations/sigmoid", b64, 11)
            sj, out = timed_post(ours, "/v1/activations/sigmoid", js, 5)
            print(arg, "b64 median %.4f json %.4f" % (s, sj), flush=True)

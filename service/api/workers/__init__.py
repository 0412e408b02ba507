"""Compute worker processes: the front forwards each computation to one of them (``WorkerPool``),
where the same application serves it (``run_worker``), so that the front stays responsive, and a
crash or a runaway computation costs one request. Its one public face is this package."""

from service.api.workers._pool import WorkerPool

__all__ = ["WorkerPool"]

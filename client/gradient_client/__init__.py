"""Python client of Gradient Service: ``Client`` and ``AsyncClient`` for every endpoint, numpy
arrays in and out (torch tensors in too, when torch is installed), typed errors, retries, and a
command line (``gradient-client``). The reference is the service's docs/client.md."""

__version__ = "0.1.0"

from gradient_client._wire import TensorShape
from gradient_client.client import AsyncClient, AsyncEventStream, Client, EventStream
from gradient_client.errors import (
    ClientTimeoutError,
    ConnectionFailedError,
    DeadlineError,
    GradientError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PreconditionFailedError,
    TooLargeError,
    UnauthorizedError,
    ValidationError,
)
from gradient_client.results import (
    ActivationResult,
    Basin,
    DifferentiateResult,
    DryRunResult,
    LandscapeResult,
    LossResult,
    Meta,
    NearestMinimum,
    OptimizeResult,
    ProgressEvent,
    ProgressRun,
    ResultEvent,
    Run,
    StreamEvent,
    Summary,
    Trajectory,
)

__all__ = [
    "ActivationResult",
    "AsyncClient",
    "AsyncEventStream",
    "Basin",
    "Client",
    "ClientTimeoutError",
    "ConnectionFailedError",
    "DeadlineError",
    "DifferentiateResult",
    "DryRunResult",
    "EventStream",
    "GradientError",
    "InvalidInputError",
    "LandscapeResult",
    "LossResult",
    "Meta",
    "NearestMinimum",
    "NotFoundError",
    "OptimizeResult",
    "OverloadedError",
    "PreconditionFailedError",
    "ProgressEvent",
    "ProgressRun",
    "ResultEvent",
    "Run",
    "StreamEvent",
    "Summary",
    "TensorShape",
    "TooLargeError",
    "Trajectory",
    "UnauthorizedError",
    "ValidationError",
    "__version__",
]

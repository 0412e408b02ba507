"""``gradient-service``: start the server. Every setting is also a command-line option."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.config import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradient-service",
        description="Serve values and gradients computed by PyTorch autograd over HTTP.",
    )
    for name, field in Settings.model_fields.items():
        env = f"GRADIENT_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar=env,
            help=f"{field.description or ''} (env {env}, default {field.default!r})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Options become environment variables so that every worker process sees the same settings.
    for name, value in vars(args).items():
        if value is not None:
            os.environ[f"GRADIENT_{name.upper()}"] = value
    try:
        settings = Settings()
    except ValidationError as exc:
        parser.error(str(exc))
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()

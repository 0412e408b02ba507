"""``gradient-service``: start the server. Every setting is also a command-line option."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.config import Settings
from service.logs import logging_config


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
    args_given = sys.argv[1:] if argv is None else list(argv)
    if args_given[:1] == ["migrate"]:  # gradient-service migrate [--url URL]: the database's schema
        from service.store.__main__ import main as store_main

        store_main(["upgrade", *args_given[1:]])
        return
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
    # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is done: exit 0 then.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=logging_config(settings.log_level, settings.log_format),
        access_log=False,  # RequestMiddleware writes the access log, with request ids
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()

"""``Client`` and ``AsyncClient``: the same methods, blocking or async, over one shared core.

Each method builds a ``Call`` (``_calls``: the body, how to read the answer), and one generator,
``_exchange``, decides everything about sending it: the headers, when to retry and how long to
wait, which exception an error answer becomes. The two clients only perform what it asks for (a
send, a sleep) with httpx's blocking or async client; ``_StreamReader`` reads an event stream's
text for both.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from gradient_client import __version__, _calls
from gradient_client._calls import Call
from gradient_client._retry import RetryPolicy, parse_retry_after
from gradient_client._sse import EventParser
from gradient_client.errors import (
    ClientTimeoutError,
    ConnectionFailedError,
    GradientError,
    error_from_body,
    error_from_response,
    status_of_type,
)
from gradient_client.results import OptimizeResult, ProgressEvent, ResultEvent, StreamEvent

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 120.0
"""Above the service's default time budget (``GRADIENT_REQUEST_TIMEOUT_S``, 60 s), so that the
service's own 504 arrives first."""
DEFAULT_RETRIES = 3
DEFAULT_MAX_CONNECTIONS = 10
KEEPALIVE_EXPIRY_S = 4.0
"""Idle connections are dropped before uvicorn's 5 s keep-alive closes them under a request."""
REQUEST_ID_HEADER = "X-Request-ID"


# --- the shared core: what to send, when to retry, what an answer means -------------------------


@dataclass(frozen=True)
class _Send:
    call: Call[Any]
    headers: dict[str, str]
    stream: bool
    request_id: str
    """The call's ``X-Request-ID`` (in ``headers`` too), the same for every attempt."""


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: httpx.Headers
    content: bytes
    """The body; empty for a successful stream, whose body is read from ``response``."""
    response: httpx.Response
    request_id: str
    """The ``X-Request-ID`` the request was sent with: what an error is reported with when the
    answer does not name its own (a stream's ``error`` event, a proxy that drops the header)."""


_Exchange = Generator[_Send | _Sleep, _Reply | Exception | None, _Reply]


@dataclass(frozen=True)
class _Settings:
    base_url: str
    api_key: str | None
    timeout: float | None
    policy: RetryPolicy
    max_connections: int

    def headers(self, request_id: str, call: Call[Any], stream: bool) -> dict[str, str]:
        headers = {
            REQUEST_ID_HEADER: request_id,
            "User-Agent": f"gradient-client/{__version__}",
            # Base64 tensors hardly compress: gzip made a tanh of 1M float32 numbers 4x slower.
            "Accept-Encoding": "identity",
        }
        if call.content is not None:
            headers["Content-Type"] = "application/json"
        if stream:
            headers["Accept"] = "text/event-stream"
        else:
            headers["Accept"] = "application/json"
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def http_options(self) -> dict[str, Any]:
        limits = httpx.Limits(
            max_connections=self.max_connections,
            max_keepalive_connections=self.max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        return {"base_url": self.base_url, "timeout": self.timeout, "limits": limits}

    def stream_timeout(self) -> httpx.Timeout:
        """A stream waits as long as it takes between events: the service ends it at its own
        time budget."""
        return httpx.Timeout(self.timeout, read=None)


def _exchange(settings: _Settings, call: Call[Any], stream: bool = False) -> _Exchange:
    """Send ``call`` until it succeeds or may not be retried; return the successful reply, or
    raise the error it ends with. One request id for every attempt of the call."""
    request_id = uuid.uuid4().hex
    headers = settings.headers(request_id, call, stream)
    for attempt in itertools.count():
        outcome = yield _Send(call, headers, stream, request_id)
        if isinstance(outcome, Exception):
            wait = settings.policy.wait_after_exception(attempt, outcome)
            if wait is None:
                raise _network_error(outcome, request_id, attempt + 1) from outcome
        else:
            assert outcome is not None
            if 200 <= outcome.status < 300:
                return outcome
            retry_after = parse_retry_after(outcome.headers.get("retry-after"))
            answered_id = outcome.headers.get(REQUEST_ID_HEADER) or request_id
            error = error_from_response(outcome.status, outcome.content, answered_id, retry_after)
            wait = settings.policy.wait_after_status(attempt, outcome.status, retry_after, error.type)
            if wait is None:
                raise error
        yield _Sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _network_error(exc: Exception, request_id: str, attempts: int) -> GradientError:
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return ClientTimeoutError(None, "timeout", f"no answer within the client's timeout ({exc!r})", request_id)
    return ConnectionFailedError(None, "connection_failed", f"{exc!r}, after {tries}", request_id)


def _result(call: Call[T], reply: _Reply) -> T:
    return call.parse(json.loads(reply.content))


class _StreamReader:
    """Turns an optimisation's event stream, as text arrives, into stream events; an
    ``error`` event becomes its exception (with the status the same error has outside a
    stream)."""

    def __init__(self, dtype: str, request_id: str) -> None:
        self.parser = EventParser()
        self.dtype = dtype
        self.request_id = request_id
        self.done = False

    def feed(self, text: str) -> list[StreamEvent]:
        return [event for sse in self.parser.feed(text) if (event := self._event(sse.event, sse.data)) is not None]

    def finish(self) -> list[StreamEvent]:
        events = [event for sse in self.parser.flush() if (event := self._event(sse.event, sse.data)) is not None]
        if not self.done:
            raise ConnectionFailedError(
                None, "connection_failed", "the event stream ended before its result", self.request_id
            )
        return events

    def _event(self, kind: str, data: str) -> StreamEvent | None:
        if self.done:
            return None
        if kind == "progress":
            return ProgressEvent.parse(json.loads(data), self.dtype)
        if kind == "result":
            self.done = True
            return ResultEvent(OptimizeResult.parse(json.loads(data)))
        if kind == "error":
            body = json.loads(data)
            error_type = body.get("error", {}).get("type", "") if isinstance(body, dict) else ""
            raise error_from_body(status_of_type(error_type), body, self.request_id)
        return None  # an event type this client does not know


def _signature_of(
    method: Callable[..., Any], build: Callable[..., Any], owner: str, returns: Any = None, name: str | None = None
) -> None:
    """Give a generated method the builder's name (or ``name``), documentation and signature
    (plus ``self``, and what the method returns rather than the builder's ``Call``)."""
    functools.update_wrapper(method, build)
    del method.__wrapped__  # type: ignore[attr-defined]
    method.__module__ = __name__
    method.__name__ = name or build.__name__
    method.__qualname__ = f"{owner}.{method.__name__}"
    signature = inspect.signature(build)
    if returns is None:
        returns = _unwrap_calls(str(signature.return_annotation))
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()], return_annotation=returns
    )


_CALL = re.compile(r"(?<![\w.])Call\[")


def _unwrap_calls(annotation: str) -> str:
    """A builder's return annotation with each ``Call[X]`` read as ``X``, what the method returns:
    ``Call[DifferentiateResult] | Call[DryRunResult]`` is ``DifferentiateResult | DryRunResult``."""
    pieces: list[str] = []
    rest = annotation
    while (found := _CALL.search(rest)) is not None:
        depth, end = 1, found.end()
        while depth:
            if end == len(rest):
                raise ValueError(f"unbalanced brackets in the annotation {annotation!r}")
            depth += {"[": 1, "]": -1}.get(rest[end], 0)
            end += 1
        pieces += [rest[: found.start()], _unwrap_calls(rest[found.end() : end - 1])]
        rest = rest[end:]
    return "".join(pieces) + rest


# --- the blocking client -----------------------------------------------------------------------


def _blocking(build: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._execute(build(*args, **kwargs))

    _signature_of(method, build, "Client")
    return method


def _blocking_stream(build: Callable[P, Call[OptimizeResult]]) -> Callable[Concatenate[Client, P], EventStream]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> EventStream:
        return EventStream(self, build(*args, **kwargs))

    _signature_of(method, build, "Client", "EventStream", "optimize_stream")
    method.__doc__ = "Like ``optimize``, streamed: an iterator of progress events, then the result event."
    return method


class Client:
    """A blocking client of Gradient Service. ``base_url`` is the service's root
    (``http://127.0.0.1:8000``); ``api_key`` is sent as ``Authorization: Bearer``; ``timeout``
    (seconds, ``None`` for none) bounds each attempt; a busy service's answers (429, and 503
    ``overloaded``; not a 503 for running out of memory) and connection failures are retried up
    to ``retries`` times; at most ``max_connections`` connections are kept open. Use it as a
    context manager, or call ``close()``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._settings = _Settings(base_url.rstrip("/"), api_key, timeout, RetryPolicy(retries), max_connections)
        self._http = httpx.Client(**self._settings.http_options())

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def http(self) -> httpx.Client:
        """The httpx client underneath (for event hooks, extra headers, inspection)."""
        return self._http

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, call: Call[T]) -> T:
        return _result(call, self._drive(_exchange(self._settings, call)))

    def _drive(self, exchange: _Exchange) -> _Reply:
        action = next(exchange)
        while True:
            outcome: _Reply | Exception | None = None
            if isinstance(action, _Sleep):
                time.sleep(action.seconds)
            else:
                try:
                    outcome = self._send(action)
                except httpx.TransportError as exc:
                    outcome = exc
            try:
                action = exchange.send(outcome)
            except StopIteration as done:
                reply: _Reply = done.value
                return reply

    def _send(self, send: _Send) -> _Reply:
        call = send.call
        request = self._http.build_request(
            call.method,
            call.path,
            content=call.content,
            headers=send.headers,
            timeout=self._settings.stream_timeout() if send.stream else httpx.USE_CLIENT_DEFAULT,
        )
        response = self._http.send(request, stream=send.stream)
        if send.stream and not response.is_success:
            try:
                response.read()
            finally:
                response.close()
        content = b"" if send.stream and response.is_success else response.content
        return _Reply(response.status_code, response.headers, content, response, send.request_id)

    activations = _blocking(_calls.activations)
    losses = _blocking(_calls.losses)
    functions = _blocking(_calls.functions)
    objectives = _blocking(_calls.objectives)
    optimizers = _blocking(_calls.optimizers)
    info = _blocking(_calls.info)
    activation = _blocking(_calls.activation)
    loss = _blocking(_calls.loss)
    differentiate = _blocking(_calls.differentiate)
    optimize = _blocking(_calls.optimize)
    optimize_stream = _blocking_stream(_calls.optimize)
    landscape = _blocking(_calls.landscape)


class EventStream:
    """The events of a streamed optimisation (``Client.optimize_stream``): iterate it for
    ``StreamEvent`` s, progress ones then the result; the request is sent at the first one.
    Leaving early (``break``, ``close()``, the end of a ``with`` block) closes the connection,
    which stops the runs on the server. ``result`` holds the result once it has arrived."""

    def __init__(self, client: Client, call: Call[OptimizeResult]) -> None:
        self._client = client
        self._call = call
        self._events: Generator[StreamEvent, None, None] | None = None
        self._closed = False
        self.result: OptimizeResult | None = None

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> StreamEvent:
        if self._events is None:
            if self._closed:
                raise StopIteration
            self._events = self._read(self._client, self._call)
        event = next(self._events)
        if isinstance(event, ResultEvent):
            self.result = event.result
        return event

    @staticmethod
    def _read(client: Client, call: Call[OptimizeResult]) -> Generator[StreamEvent, None, None]:
        # Static, so that the generator holds no reference to its stream: a stream left in a
        # ``for`` loop is then freed, and its connection closed, at once (not by the cycle collector).
        reply = client._drive(_exchange(client._settings, call, stream=True))
        response = reply.response
        reader = _StreamReader(call.dtype or "float32", response.headers.get(REQUEST_ID_HEADER) or reply.request_id)
        try:
            for text in response.iter_text():
                yield from reader.feed(text)
            yield from reader.finish()
        except httpx.TransportError as exc:
            raise _network_error(exc, reader.request_id, 1) from exc
        finally:
            response.close()

    def close(self) -> None:
        """Stop reading and close the connection (the server then stops the runs)."""
        self._closed = True
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


# --- the async client --------------------------------------------------------------------------


def _async(build: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._execute(build(*args, **kwargs))

    _signature_of(method, build, "AsyncClient")
    return method


def _async_stream(
    build: Callable[P, Call[OptimizeResult]],
) -> Callable[Concatenate[AsyncClient, P], AsyncEventStream]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncEventStream:
        return AsyncEventStream(self, build(*args, **kwargs))

    _signature_of(method, build, "AsyncClient", "AsyncEventStream", "optimize_stream")
    method.__doc__ = (
        "Like ``optimize``, streamed: an async iterator of progress events, then the result event "
        "(not a coroutine: ``async for event in client.optimize_stream(...)``)."
    )
    return method


class AsyncClient:
    """The async twin of :class:`Client` (asyncio): the same methods as coroutines, one pool of
    at most ``max_connections`` connections shared by every concurrent call. Use it as an async
    context manager, or ``await close()``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._settings = _Settings(base_url.rstrip("/"), api_key, timeout, RetryPolicy(retries), max_connections)
        self._http = httpx.AsyncClient(**self._settings.http_options())

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def http(self) -> httpx.AsyncClient:
        """The httpx client underneath (for event hooks, extra headers, inspection)."""
        return self._http

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _execute(self, call: Call[T]) -> T:
        return _result(call, await self._drive(_exchange(self._settings, call)))

    async def _drive(self, exchange: _Exchange) -> _Reply:
        action = next(exchange)
        while True:
            outcome: _Reply | Exception | None = None
            if isinstance(action, _Sleep):
                await asyncio.sleep(action.seconds)
            else:
                try:
                    outcome = await self._send(action)
                except httpx.TransportError as exc:
                    outcome = exc
            try:
                action = exchange.send(outcome)
            except StopIteration as done:
                reply: _Reply = done.value
                return reply

    async def _send(self, send: _Send) -> _Reply:
        call = send.call
        request = self._http.build_request(
            call.method,
            call.path,
            content=call.content,
            headers=send.headers,
            timeout=self._settings.stream_timeout() if send.stream else httpx.USE_CLIENT_DEFAULT,
        )
        response = await self._http.send(request, stream=send.stream)
        if send.stream and not response.is_success:
            try:
                await response.aread()
            finally:
                await response.aclose()
        content = b"" if send.stream and response.is_success else response.content
        return _Reply(response.status_code, response.headers, content, response, send.request_id)

    activations = _async(_calls.activations)
    losses = _async(_calls.losses)
    functions = _async(_calls.functions)
    objectives = _async(_calls.objectives)
    optimizers = _async(_calls.optimizers)
    info = _async(_calls.info)
    activation = _async(_calls.activation)
    loss = _async(_calls.loss)
    differentiate = _async(_calls.differentiate)
    optimize = _async(_calls.optimize)
    optimize_stream = _async_stream(_calls.optimize)
    landscape = _async(_calls.landscape)


class AsyncEventStream:
    """The events of a streamed optimisation on an :class:`AsyncClient`: ``async for`` it.
    Leaving early closes the connection and stops the runs: use ``async with`` (or ``await
    aclose()``) to close it at once rather than when it is garbage-collected."""

    def __init__(self, client: AsyncClient, call: Call[OptimizeResult]) -> None:
        self._client = client
        self._call = call
        self._events: AsyncGenerator[StreamEvent, None] | None = None
        self._closed = False
        self.result: OptimizeResult | None = None

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._events is None:
            if self._closed:
                raise StopAsyncIteration
            self._events = self._read(self._client, self._call)
        event = await anext(self._events)
        if isinstance(event, ResultEvent):
            self.result = event.result
        return event

    @staticmethod
    async def _read(client: AsyncClient, call: Call[OptimizeResult]) -> AsyncGenerator[StreamEvent, None]:
        # Static, for the same reason as EventStream._read.
        reply = await client._drive(_exchange(client._settings, call, stream=True))
        response = reply.response
        reader = _StreamReader(call.dtype or "float32", response.headers.get(REQUEST_ID_HEADER) or reply.request_id)
        try:
            async for text in response.aiter_text():
                for event in reader.feed(text):
                    yield event
            for event in reader.finish():
                yield event
        except httpx.TransportError as exc:
            raise _network_error(exc, reader.request_id, 1) from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Stop reading and close the connection (the server then stops the runs)."""
        self._closed = True
        if self._events is not None:
            await self._events.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

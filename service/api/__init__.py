"""The HTTP layer, thin over ``service.compute``: ``routes`` (one module per endpoint family:
a request model, one call into compute, an encoder), ``endpoints`` (the machinery those routes
share), ``asgi`` (what runs around every request), ``streaming`` (server-sent events),
``schemas`` (request and response models), ``openapi`` and ``errors`` (error to HTTP body)."""

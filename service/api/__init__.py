"""The HTTP layer: schemas, body parsing, error handlers and thin routes over service.compute."""

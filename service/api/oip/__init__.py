"""The Open Inference Protocol (v2): its JSON objects (``schemas``), its wire with the binary
tensor data extension (``wire``), the models it serves (``models``) and the serving of its
requests (``serving``); the routes are in ``service.api.routes.oip``."""

"""Saved formulas served as Tesseracts (differentiable components over HTTP, with
``tesseract_core.Tesseract.from_url`` as their client): the protocol's array encodings, its
endpoints as plain functions, its OpenAPI document and its error shapes."""

from service.api.tesseract._arrays import OUTPUT_FORMATS, Invalid
from service.api.tesseract._errors import ProtocolError, protocol_response
from service.api.tesseract._openapi import Described, document
from service.api.tesseract._protocol import ARRAY_ENDPOINTS, ENDPOINTS, Reader, negotiate, run

__all__ = [
    "ARRAY_ENDPOINTS",
    "ENDPOINTS",
    "OUTPUT_FORMATS",
    "Described",
    "Invalid",
    "ProtocolError",
    "Reader",
    "document",
    "negotiate",
    "protocol_response",
    "run",
]

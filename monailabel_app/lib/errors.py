"""Errors the app turns into HTTP answers that say what went wrong, instead of MONAI Label's bare 500.

MONAI Label 0.8.x registers no exception handlers: anything raised inside a task becomes "Internal Server Error".
FastAPI's :class:`HTTPException` raised anywhere below an endpoint (the datastore, the infer task through the
app) reaches the client as ``{"detail": "..."}`` with its status code, so the app raises those.
"""

from __future__ import annotations

from fastapi import HTTPException

BAD_REQUEST = 400  # a corrupt or inconsistent upload
NOT_FOUND = 404  # unknown image id
UNPROCESSABLE = 422  # an image that exists but cannot be analysed (multi-frame, undecodable DICOM, ...)
BAD_GATEWAY = 502  # the PACS answered, but with an error (e.g. a transfer syntax it cannot send)
PACS_UNAVAILABLE = 503  # the DICOMweb server does not answer


def http_error(status: int, message: str) -> HTTPException:
    """An HTTPException whose JSON body is ``{"detail": message}``."""
    return HTTPException(status_code=status, detail=message)

"""``edgeclip serve``: the HTTP service (REST API, live source, browser page) over a Classifier.

Needs the ``serve`` extra (Starlette + uvicorn + python-multipart). ``create_app(classifier, source=None)``
returns an ASGI app; see :mod:`edgeclip.runtime.serve.app` for the endpoints. This package never imports
torch.
"""
from __future__ import annotations

from .app import ServeOptions, Service, create_app, is_loopback

__all__ = ["ServeOptions", "Service", "create_app", "is_loopback"]

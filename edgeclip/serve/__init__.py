"""``edgeclip serve``: the HTTP service (REST API, live source, browser page) over a Classifier.

``create_app(classifier, source=None)`` gives an ASGI app::

    import edgeclip, uvicorn
    from edgeclip.serve import create_app

    app = create_app(edgeclip.load("bundle"), source="0", token="s3cret")
    uvicorn.run(app, host="127.0.0.1", port=8080)

Mount it inside another Starlette/FastAPI app with ``app.mount("/clip", create_app(clf))``. Endpoints,
token and limits: ``docs/serve.md``. Needs ``pip install 'edgeclip[serve]'`` (Starlette, uvicorn,
python-multipart). This package never imports torch.
"""
from __future__ import annotations

from .app import LOOPBACK_HOSTS, ServeOptions, Service, create_app, is_loopback, prepare_source

__all__ = ["LOOPBACK_HOSTS", "ServeOptions", "Service", "create_app", "is_loopback", "prepare_source"]

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

import importlib
from typing import Any

from .options import ServeOptions

#: the names that need Starlette, by the module that defines them: imported on first use, so that this package
#: (``ServeOptions``, the command's help) imports where the serve extra is not installed
_LAZY = {"LOOPBACK_HOSTS": "guard", "is_loopback": "guard", "Service": "app", "create_app": "app",
         "prepare_source": "app"}

__all__ = ["LOOPBACK_HOSTS", "ServeOptions", "Service", "create_app", "is_loopback", "prepare_source"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)

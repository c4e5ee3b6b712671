"""Files: a folder of images (or one image) played as a stream in name order, and video files read frame by frame."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeclipError, FrameError, SourceError
from ..runtime.images import IMAGE_EXTENSIONS, expand_inputs, read_image
from .opencv import CaptureReader, ffmpeg_params, opencv_has


class FolderReader:
    """Image files of a folder, in name order; a file that cannot be read raises FrameError and the next
    ``read`` goes on with the following file."""

    def __init__(self, files: list[Path], fps: float | None) -> None:
        self.files, self.fps, self.pos = files, fps, 0

    def read(self) -> np.ndarray | None:
        if self.pos >= len(self.files):
            return None
        path = self.files[self.pos]
        self.pos += 1
        try:
            return read_image(path)
        except EdgeclipError as exc:
            raise FrameError(str(exc), file=os.fspath(path)) from exc
        except Exception as exc:  # a decoder failure (MemoryError, cv2.error) is one bad frame too
            raise FrameError(f"{path}: {type(exc).__name__}: {exc}", file=os.fspath(path)) from exc

    def close(self) -> None:
        self.pos = len(self.files)



def match(kind: str, text: str, options: Any) -> dict[str, Any] | None:
    """A folder or an image file (``folder``), or another existing file (``file``)."""
    p = Path(text)
    if kind == "folder":
        if p.is_dir():
            found = [f for f in expand_inputs([p]) if f.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise SourceError(f"{p}: the folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            return {"target": str(p), "files": found}
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            return {"target": str(p), "files": [p]}
        return None
    return {"target": str(p)} if p.is_file() else None


def open_reader(spec: Any) -> Any:
    """A folder reader, or OpenCV on the video file; SourceError when OpenCV cannot read it."""
    if spec.kind == "folder":
        return FolderReader(spec.files, spec.nominal_fps())
    import cv2

    if opencv_has("FFMPEG"):
        cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, ffmpeg_params(spec.options))
    else:
        cap = cv2.VideoCapture(str(spec.target), cv2.CAP_ANY)
    if not cap.isOpened():
        raise SourceError(f"{spec.target}: OpenCV cannot open this video file (unknown container or codec); "
                          f"convert it, e.g. `ffmpeg -i IN -c:v libx264 out.mp4`")
    return CaptureReader(cap, str(spec.target))

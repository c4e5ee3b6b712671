"""Frame sources: cameras, video files, network streams, image folders, GStreamer pipelines, synthetic frames.

``parse_source(text, options)`` turns a source string into a :class:`SourceSpec`; ``spec.open()`` returns a
:class:`FrameReader` whose ``read()`` gives BGR uint8 frames and ``None`` at the end of a file or when a
live source is lost (the streaming loop then reconnects). Each kind is a row of
``edgeclip.tables.SOURCE_KINDS`` and a module here that owns its parsing (``match``) and opening
(``open_reader``); the row says which :class:`SourceOptions` it takes.

=============================  =====================================================================
``0``, ``/dev/video0``         a camera (V4L2 on Linux); ``width/height/fps`` are requested
``csi://0``                    a Jetson CSI camera: an ``nvarguscamerasrc`` GStreamer pipeline
``usb://0``                    a USB camera through a ``v4l2src`` GStreamer pipeline
``gst:PIPELINE`` or ``a ! b``  a raw GStreamer pipeline ending in ``appsink``
``mjpeg+http(s)://``           multipart MJPEG over HTTP with edgeclip's own reader (no FFmpeg needed)
``rtsp://``, ``http(s)://``    network streams through OpenCV's FFmpeg backend (MJPEG over HTTP too)
``synthetic://640x480``        generated moving frames, for tests and soak runs without a camera
a folder of images             played as a stream, in name order
a video file                   read frame by frame; ends at the end of the file (``loop`` restarts)
=============================  =====================================================================

GStreamer sources need an OpenCV built with GStreamer (``edgeclip.sources.gstreamer``). This package never
imports torch.
"""
from __future__ import annotations

from .gstreamer import require_gstreamer
from .mjpeg import MAX_PART_BYTES, MjpegHttpReader
from .opencv import opencv_has
from .spec import DEFAULT_FOLDER_FPS, FrameReader, SourceOptions, SourceSpec, parse_source

__all__ = ["DEFAULT_FOLDER_FPS", "MAX_PART_BYTES", "FrameReader", "MjpegHttpReader", "SourceOptions", "SourceSpec",
           "opencv_has", "parse_source", "require_gstreamer"]

"""The torch side of edgeclip: loading CLIP checkpoints (``models``), exporting their towers to ONNX with a
parity check (``onnx_export``), writing a bundle (``exporter``), and the torch reference for ``eval`` with
``engine='torch'`` (``reference``). ``ExportOptions`` (``options``) and the built-in names (``defaults``)
import without torch."""

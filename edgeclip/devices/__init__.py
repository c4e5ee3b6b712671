"""Device profiles and detection, TensorRT readiness checks and engines.

``catalog`` (profiles as JSON data), ``detect`` (which profile is this machine, and why), ``backends``
(the profile's backend order, probed), ``readiness`` (will TensorRT build this ONNX; plain ``onnx``),
``engines`` (build, cache and find TensorRT engines in a bundle). Nothing here imports TensorRT at import
time; the runtime's TensorRT backend is ``edgeclip.runtime.backends.tensorrt``.
"""

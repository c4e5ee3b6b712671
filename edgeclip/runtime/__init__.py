"""The torch-free inference core: preprocessing, image decoding, tokenizer, labels, the classifier and the
inference backends (one module each under ``backends/``). Applications (stream, serve, batch, watch) sit
above the public API, not here. Nothing in this package imports torch."""

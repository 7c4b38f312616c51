"""Models on a worker: the catalogue of base models (where weights come from,
checked and loaded safely), the bundled GGUF conversion, and exports of
fine-tunes (merged weights)."""

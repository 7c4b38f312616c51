"""Inference for chat completions, batches and evaluations: base models kept
loaded with fine-tunes' adapters attached (engine.py), batched generation
mixing adapters in one batch (generation.py), a request turned into
generation rows and back (requests.py), and the two tasks: a chat request
(chat.py) and a batch (batch.py)."""

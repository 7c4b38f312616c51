"""Inference for chat completions, batches and evaluations: base models kept
loaded with fine-tunes' adapters attached (engine.py), one decode loop per
worker process that every request, batch line and evaluation item joins and
leaves (loop.py), the running batch it steps (batching.py), each row's LoRA
adapter applied in mixed batches (lora.py), the batch budget measured for the
device (budget.py), generation requests and a one-shot `generate`
(generation.py), a request turned into generation rows and back
(requests.py), and the two tasks: a chat request (chat.py) and a batch
(batch.py)."""

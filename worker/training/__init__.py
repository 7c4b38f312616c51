"""Fine-tuning: data preparation (data.py), the training recipe (recipe.py) and
the run's environment record (environment.py).

Import the submodules directly; this package imports nothing heavy itself so
that `worker` stays importable without torch."""

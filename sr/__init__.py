"""srcompress SR core: pure PyTorch models, data, metrics, losses, pruning and complexity accounting.

Nothing here imports ray, optuna or mlflow; the orchestrator wraps these functions.
"""

__version__ = "0.1.0"

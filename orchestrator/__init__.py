"""srcompress orchestrator: the CLI and the thin Ray / Optuna / MLflow layer over ``sr``."""

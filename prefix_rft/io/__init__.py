"""Where results go: the checkpoint store (local or S3), MLflow tracking and the run layout."""

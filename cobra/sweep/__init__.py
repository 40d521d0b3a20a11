"""Sweeps: Ray Tune schedules CoBra trials, Optuna searches, MLflow records. The only package that
imports Ray; `cobra/tracking/mlflow_api.py` is the only module that imports MLflow."""

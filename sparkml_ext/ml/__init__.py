"""Spark ML Estimators and Models that train on Ray: Params, fit, in-cluster transform, persistence."""

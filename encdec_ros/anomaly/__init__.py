"""Anomaly detection: the scorer (shared by the node and the evaluation) and its evaluation."""

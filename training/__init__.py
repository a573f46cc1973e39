"""Offline training for encdec_ros (torch). Importing this package does not import torch."""

"""Denoising: learned and classical streaming filters, corruption models, evaluation."""

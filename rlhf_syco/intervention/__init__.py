"""Interventions against sycophancy: Wei et al. (2023)'s synthetic data (`data.py`)."""

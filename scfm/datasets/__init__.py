"""Example data sets."""

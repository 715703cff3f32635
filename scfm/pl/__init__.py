"""Plot model results."""

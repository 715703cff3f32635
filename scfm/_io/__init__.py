"""File access: safe loading of official formats, downloads with a verified cache."""

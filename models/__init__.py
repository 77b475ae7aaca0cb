"""Bundled models: small, reproducible, with the script that made them."""

"""The semi-supervised methods, one module each."""

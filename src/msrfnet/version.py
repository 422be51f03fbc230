"""The package version (one place; read by pyproject.toml and written into every checkpoint)."""

__all__ = ["__version__"]

__version__ = "0.1.0"

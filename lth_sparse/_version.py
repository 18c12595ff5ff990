"""The package version, in a module of its own so that modules below the package root (``_dispatch``) can
read it without importing the root. Keep equal to ``version`` in pyproject.toml."""

__version__ = "0.1.0"

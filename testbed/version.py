"""The package version, in a module of its own so that any module can name it without
importing the package's public face (testbed/__init__.py imports nearly everything)."""

VERSION = "0.1.0"

"""The installed version of loader."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dynoloader")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

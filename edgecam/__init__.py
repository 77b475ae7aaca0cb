"""edgecam: compressed neural networks compiled with Apache TVM and served on smart cameras."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgecam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

"""The errors htr raises. Each also subclasses the stdlib error it resembles, so callers can catch either."""


class HtrError(Exception):
    """Root of every error htr raises on purpose."""


class BundleError(HtrError):
    """A model bundle is missing, damaged or does not match its manifest."""


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle folder or one of its files does not exist."""


class ImageError(HtrError, ValueError):
    """An input image cannot be read or used."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An input image path does not exist."""


class OptionsError(HtrError, ValueError):
    """A recognition or export option has a value that cannot be used."""

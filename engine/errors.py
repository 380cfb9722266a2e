"""Errors a user can act on.

Every failure that a user can cause (a raster, polygon file, parameter or model folder that
is not usable) raises one of these with a message that says what was wrong and what to do.
The CLI and the HTTP server turn them into a one-line message / a 4xx answer; anything else
is a bug in GFM4D.
"""


class GFM4DError(Exception):
    """Base class of the errors GFM4D reports to users."""


class InputError(GFM4DError):
    """An input raster, vector, date or parameter cannot be used as given."""


class ModelError(GFM4DError):
    """A model folder is missing, unrecognised, or its weights do not fit its config."""


class Cancelled(GFM4DError):
    """The job was cancelled by the user; nothing was written to the destination."""

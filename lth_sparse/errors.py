"""The package's one exception for bad input.

:class:`UserError` is raised where input is judged: a config's option, a run directory of
another kind or config, a grid file, a device that is not here, data that is missing. The
command line prints it as one ``lth-sparse COMMAND: error: ...`` line with exit status 2;
any other exception is a bug, shown with its traceback and a request to report it.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input or an unusable environment, said in one line that names the input and what was expected.

    A ``ValueError``, so that callers of the API that catch ``ValueError`` for bad arguments keep doing so.
    """

"""The package's one exception for bad input.

:class:`UserError` is raised where input is judged: a config's option, a run directory of
another kind or config, a grid file, a device that is not here, data that is missing. The
command line prints it as one ``lth-sparse COMMAND: error: ...`` line with exit status 2;
any other exception is a bug, shown with its traceback and a request to report it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

__all__ = ["UserError", "judging_input"]


class UserError(ValueError):
    """Bad input or an unusable environment, said in one line that names the input and what was expected.

    A ``ValueError``, so that callers of the API that catch ``ValueError`` for bad arguments keep doing so.
    """


@contextlib.contextmanager
def judging_input() -> Iterator[None]:
    """A block that judges the user's input (a config's inputs checked, a run directory read or claimed): a
    ``ValueError``, ``KeyError`` or ``OSError`` raised inside it is the input's fault. It is raised again as a
    :class:`UserError` that is also of the original type (a missing file stays a ``FileNotFoundError`` for the
    API's callers), with the same message (an ``OSError``'s file named where its message does not)."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, KeyError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in message:
            message = f"{error.filename}: {message}"
        raise _user_error_of(type(error))(message) from error


@functools.cache
def _user_error_of(kind: type[Exception]) -> type[UserError]:
    """The :class:`UserError` that is also a ``kind`` (its message as given, not as ``kind`` would quote it)."""
    return type(
        kind.__name__,
        (UserError, kind),
        {
            # the message alone, whatever arguments ``kind``'s own constructor takes (JSONDecodeError's three)
            "__init__": lambda self, message: Exception.__init__(self, message),
            "__str__": lambda self: str(self.args[0]),
            "__module__": __name__,
        },
    )

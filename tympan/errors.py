"""The root of tympan's errors: what a user did wrong or what is missing, as opposed to a bug.

Every error class of the project derives from `TympanError`; the `tympan` command catches it and
prints its message as one line (TYMPAN_DEBUG=1 shows the traceback). Classes also keep the
builtin base they had (ValueError, RuntimeError) so that callers catching those still work.
"""

from __future__ import annotations


class TympanError(Exception):
    """An expected failure with a message for the user: bad input, bad config, a missing file."""

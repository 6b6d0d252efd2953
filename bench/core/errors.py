"""The one exception type for errors a user can cause.

Every message says what is wrong, where (file, key, argument) and what to do, so it can be shown
to a researcher as-is, before any work starts.
"""

from __future__ import annotations


class BenchError(ValueError):
    """A user-caused error (bad study file, unknown name, impossible combination, missing data)."""

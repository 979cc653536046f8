"""What every charlit command does with bad input: one ``charlit: error: ...`` line and exit status 2.

Bad input means a ValueError / FileNotFoundError raised by charlit's checks (they name the bad value and the
fix), a missing optional dependency (ImportError, e.g. ``sampler=vllm`` without vLLM), a non-finite loss, or a
full disk. Anything else is a bug and keeps its traceback;
``CHARLIT_FULL_ERROR=1`` shows the traceback for bad input too.
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager


def is_bad_input(err: BaseException) -> bool:
    if isinstance(err, (ValueError, FileNotFoundError, FloatingPointError, ImportError)):
        return True
    return isinstance(err, OSError) and err.errno == errno.ENOSPC


@contextmanager
def bad_input_exits():
    try:
        yield
    except Exception as err:
        if not is_bad_input(err) or os.environ.get("CHARLIT_FULL_ERROR"):
            raise
        print(f"charlit: error: {err}\n(set CHARLIT_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        sys.exit(2)

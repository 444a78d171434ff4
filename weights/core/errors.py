"""The one error type the project raises for bad input.

Every message is one line: what is wrong, where (file / key), and the fix.
CLIs catch :class:`MobileOError` and print ``error: <message>`` without a traceback.
"""

from __future__ import annotations


class MobileOError(Exception):
    """A user-facing error whose message is a single line naming the problem and its fix."""

    def __init__(self, message: str, fix: str | None = None):
        text = " ".join(message.split())
        if fix:
            text = f"{text} Fix: {' '.join(fix.split())}"
        super().__init__(text)


class WeightsError(MobileOError):
    """Missing, corrupt, truncated or mismatched checkpoint data."""


class ConfigError(MobileOError):
    """A config file that is missing, unreadable or lacks required fields."""


class ModelNotFoundError(MobileOError):
    """A model id or path that cannot be resolved to local files."""


def run_cli(main):
    """Run ``main()`` and turn project errors into one line on stderr and exit code 2."""
    import sys

    try:
        return main()
    except MobileOError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # unwritable output folder, full disk, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}. Fix: check the path exists, is writable and the disk "
              "has room.", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None

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


class SettingError(MobileOError):
    """A bad value of one setting.  ``param`` is the setting's own name (``steps``,
    ``n_images``, ``temp``); the message names it the way its reader spells it: the command
    line's flag by default (``{name}`` in the text becomes ``--n-images``), and the server
    asks :meth:`named` for its API parameter instead, without rewriting text."""

    def __init__(self, param: str, message: str, fix: str | None = None):
        self.param, self._message, self._fix = param, message, fix
        super().__init__(*self._texts(flag_name(param)))

    def _texts(self, name: str) -> tuple[str, str | None]:
        return self._message.replace("{name}", name), None if self._fix is None else self._fix.replace("{name}", name)

    def named(self, name: str) -> str:
        """The one-line message with the setting called ``name``."""
        return str(MobileOError(*self._texts(name)))


def flag_name(param: str) -> str:
    """The command-line flag of a setting: ``n_images`` -> ``--n-images``."""
    return "--" + param.replace("_", "-")


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

"""Doc-comment coverage of a Swift module's public API: ``python tests/tools/swift_docs.py DIR [--min PCT]``.

A test tool, not part of the product (``make swift-test`` runs it over
ios_bridge/swift/Sources/MobileO and fails below 100 %).  A public declaration is a line
whose first word, after attributes (``@available(...)``, ``@discardableResult``, ...) and
modifiers (``nonisolated``, ``final``, ``static``, ...), is ``public`` or ``open``; it is
documented when a ``///`` or ``/** */`` comment ends right above it or above its attributes.
Enum cases inherit their enum's access and are not counted (the package documents them
anyway).  Prints the count and every undocumented declaration as ``file:line: text``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

MODIFIERS = r"(?:(?:nonisolated(?:\(unsafe\))?|final|static|class|override|convenience|required|indirect|mutating|dynamic)\s+)*"
DECLARATION = re.compile(r"^\s*(?:@\w+(?:\([^)]*\))?\s+)*" + MODIFIERS + r"(?:public|open)(?:\(set\))?\s")
ATTRIBUTE = re.compile(r"^\s*@\w+(?:\([^)]*\))?\s*$")


def documented(lines: list[str], i: int) -> bool:
    """Whether the declaration at line i has a doc comment right above it (attributes may sit between)."""
    j = i - 1
    while j >= 0 and ATTRIBUTE.match(lines[j]):
        j -= 1
    if j < 0:
        return False
    above = lines[j].strip()
    return above.startswith("///") or above.endswith("*/") and "/**" in "".join(lines[max(0, j - 50):j + 1])


def scan(folder: Path) -> tuple[int, list[str]]:
    total, missing = 0, []
    for path in sorted(folder.rglob("*.swift")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith("//") or not DECLARATION.match(line):
                continue
            total += 1
            if not documented(lines, i):
                missing.append(f"{path}:{i + 1}: {line.strip()}")
    return total, missing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tests/tools/swift_docs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="the module's source folder, e.g. ios_bridge/swift/Sources/MobileO")
    p.add_argument("--min", type=float, default=100.0, help="lowest coverage in percent that passes (default 100)")
    a = p.parse_args(argv)
    folder = Path(a.folder)
    if not folder.is_dir():
        print(f"error: {folder} is not a folder. Fix: pass the Swift module's source folder.", file=sys.stderr)
        return 2
    total, missing = scan(folder)
    covered = 100.0 * (total - len(missing)) / total if total else 100.0
    for m in missing:
        print(m)
    print(f"swift_docs: {total - len(missing)} of {total} public declarations documented ({covered:.1f} %)")
    return 0 if covered >= a.min else 1


if __name__ == "__main__":
    sys.exit(main())

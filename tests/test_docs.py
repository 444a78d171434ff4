"""The project's own documents: every file a comment cites is in the repository, and the
upstream audit (docs/upstream.md) names tests that exist and leaves no fact unchecked."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = (".py", ".swift", ".md", ".sh", ".toml")


def tracked_text_files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in out
            if f.endswith(CODE) and (ROOT / f).is_file() and ROOT / f != Path(__file__)]


def test_cited_documents_exist_in_the_repo():
    missing, outside = [], []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        # docs/ itself names upstream repositories' files (e.g. Anemll's convert guide) as sources
        own = [] if path.parent == ROOT / "docs" else set(re.findall(r"\bdocs/[\w.-]+\.md\b", text))
        for doc in own:
            if not (ROOT / doc).is_file():
                missing.append(f"{path.relative_to(ROOT)} cites {doc}")
        # the facts files outside the repository, by their old names
        for m in re.finditer(r"(?<![\w/-])(mobile-o\.md|deployment\.md)|shared/reference", text):
            outside.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, "\n".join(missing)
    assert not outside, "cites a file outside the repository:\n" + "\n".join(outside)


def test_upstream_audit_names_real_tests_and_no_unchecked_row():
    text = (ROOT / "docs" / "upstream.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    assert len(rows) > 20
    assert not re.search(r"\bunchecked\b|\bMISSING\b", text, re.I)
    cited = set(re.findall(r"(tests/test_\w+\.py)::(\w+)", text))
    assert cited
    absent = [f"{f}::{name}" for f, name in cited
              if not re.search(rf"^\s*def {name}\b", (ROOT / f).read_text(), re.M)]
    assert not absent, "docs/upstream.md names tests that do not exist:\n" + "\n".join(sorted(absent))


def test_the_folder_card_quotes_the_readmes_drift_figures():
    """The model card an MLX folder carries (``mlx_model.convert.DRIFT_NOTE``) and README's drift
    table state the same measured figures: one changed alone fails here."""
    from mlx_model.convert import DRIFT_NOTE

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## MLX folder"):readme.index("\n## ", readme.index("## MLX folder") + 1)]
    figures = re.findall(r"\d+\.\d+ dB", DRIFT_NOTE)
    assert len(figures) >= 4
    assert [f for f in figures if f not in section] == []

"""The documentation site builds in strict mode, so CI (``make test``) fails on a broken link or anchor.

MkDocs runs in-process (no subprocess, about a second): ``mkdocs build --strict`` as ``make docs`` runs
it, with mkdocs.yml's ``validation`` turning every unresolved link and anchor into a warning and
strict mode every warning into a failure. A second build with one broken anchor proves the checks are
on. The README's relative links (to docs/ pages, read on GitHub) are checked too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _build(config_file: Path, site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]' (make test installs it)")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")  # Material's end-of-life banner, not a build warning
    cfg = load_config(str(config_file), strict=True, site_dir=str(site_dir))
    cfg.plugins.on_startup(command="build", dirty=False)
    try:
        build(cfg)
    finally:
        cfg.plugins.on_shutdown()


def test_docs_build_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _build(ROOT / "mkdocs.yml", tmp_path / "site", monkeypatch)
    site = tmp_path / "site"
    for page in ("troubleshooting", "slurm-quickstart", "configuration", "changelog"):
        assert (site / page / "index.html").is_file(), page
    assert "Unreleased" in (site / "changelog" / "index.html").read_text()  # CHANGELOG.md included


def test_strict_build_fails_on_a_broken_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]' (make test installs it)")
    from mkdocs.exceptions import Abort

    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copy(ROOT / "CHANGELOG.md", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[gone](troubleshooting.md#no-such-section)\n")
    with pytest.raises(Abort, match="strict mode"):
        _build(tmp_path / "mkdocs.yml", tmp_path / "site", monkeypatch)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "troubleshooting.md#no-such-section" in warnings[0], warnings


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to the docs pages"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"

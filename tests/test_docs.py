"""The README and docs/ stay true: generated tables current, relative links and images present."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _generate_module():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_are_current(capsys):
    status = _generate_module().main(["--check"])
    assert status == 0, "stale generated blocks; run python docs/generate.py\n" + (
        capsys.readouterr().err
    )


def test_check_reports_a_stale_block(tmp_path, monkeypatch):
    generate = _generate_module()
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- generated:gradcam-config:start -->\nold\n<!-- generated:gradcam-config:end -->\n"
    )
    monkeypatch.setattr(generate, "GENERATORS", {"gradcam-config": generate.gradcam_config})
    monkeypatch.setattr(generate, "pages", lambda: [page])
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    assert generate.main(["--check"]) == 1
    assert "old" in page.read_text()  # --check writes nothing
    assert generate.main([]) == 0
    assert "`GRADCAM.PERIOD` | `100`" in page.read_text()
    assert generate.main(["--check"]) == 0


def _targets(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)", text)
    images = re.findall(r"<img[^>]*\bsrc=\"([^\"]+)\"", text)
    return links + images


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to hyphens, repeats numbered."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.M)
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_exist(page):
    missing = []
    for target in _targets(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = page.parent / path if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files or headings: {missing}"


def test_every_page_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in PAGES[1:] if p.name != "README.md" and f"({p.name})" not in index]
    assert not unlisted, f"docs/README.md does not link to {unlisted}"


def _docstring_tags(cls) -> dict[str, str]:
    """``{tag: kind}`` from the "Logged tags" list of a class docstring."""
    doc = inspect.getdoc(cls)
    assert "Example::" in doc, f"{cls.__name__}'s docstring has no Example:: block"
    section = doc.split("Logged tags", 1)[1]
    return dict(re.findall(r"^- ``([^`]+)``: (image|scalar)", section, re.M))


def _table_tags(page: str, heading: str) -> dict[str, str]:
    """``{tag: kind}`` from the first table after ``heading`` in ``docs/page``."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8").split(heading, 1)[1]
    return dict(re.findall(r"^\| `([^`]+)` \| (image|scalar) \|", text.split("\n\n|", 1)[1], re.M))


@pytest.mark.parametrize(
    "where",
    [
        (
            "lightning_gradcam.lightning.callback",
            "GradCAMCallback",
            "callback.md",
            "## What is logged",
        ),
        ("detectron2_hooks.hook", "GradCAMHook", "detectron2.md", "### Tags"),
        ("lightning_gradcam.yolo.callback", "GradCAMYOLOCallback", "yolo.md", "### Tags"),
    ],
    ids=["GradCAMCallback", "GradCAMHook", "GradCAMYOLOCallback"],
)
def test_a_public_class_docstring_lists_the_tags_its_page_documents(where):
    module, name, page, heading = where
    cls = getattr(importlib.import_module(module), name)
    documented = _table_tags(page, heading)
    assert documented, f"no tag table under {heading} in {page}"
    assert _docstring_tags(cls) == documented

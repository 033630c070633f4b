"""Sphinx configuration: MyST pages, notebooks rendered from their stored outputs, an API reference from the
Google-style docstrings. Builds offline (no intersphinx) with warnings as errors (``make docs``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

import lightning_ssl  # noqa: E402

project = "lightning_ssl"
author = "lightning_ssl contributors"
copyright = "lightning_ssl contributors"
release = version = lightning_ssl.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_nb",  # MyST Markdown pages and .ipynb notebooks (brings myst_parser)
]

# --- sources ---------------------------------------------------------------------------------------------------
source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
}  # .rst first: autosummary writes .rst
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # a notebook may start at a level-2 heading after its title cell

# --- notebooks: rendered with the outputs stored in them (tests/test_notebooks.py executes them) -------------------
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "remove"  # the stored runs' library warnings (deprecations) are not part of the lesson
NOTEBOOKS = ROOT / "notebooks"
RENDERED = DOCS / "tutorials" / "notebooks"  # a build-time copy (ignored by git): Sphinx reads only under docs/

# --- API reference ----------------------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"  # types beside each argument's description, not in a long signature
autodoc_typehints_description_target = "documented"
autodoc_class_signature = "mixed"  # the constructor's arguments, with their types, under the class
autoclass_content = "class"  # the constructor's Args: live in the class docstring
autodoc_mock_imports: list[str] = []
autodoc_inherit_docstrings = False  # an override without a docstring must not show Lightning's (its roles are not ours)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# --- HTML -------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"lightning_ssl {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True, "source_edit_link": None}
pygments_style = "friendly"
smartquotes = False  # "--model.help" and 'quotes' stay as typed: the pages are full of command lines
nitpicky = False


def _copy_notebooks(app: Any) -> None:
    """Copy notebooks/*.ipynb under docs/ so the build renders them (their stored outputs, not re-executed)."""
    RENDERED.mkdir(parents=True, exist_ok=True)
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        target = RENDERED / nb.name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, target)


ROOT_INCLUDES = {"contributing": "CONTRIBUTING.md", "changelog": "CHANGELOG.md"}


def _tolerate_missing_root_files(app: Any, docname: str, source: list[str]) -> None:
    """docs/contributing.md and docs/changelog.md include a root file; until it exists, say so instead of failing."""
    name = ROOT_INCLUDES.get(docname)
    if name is not None and not (ROOT / name).exists():
        title = "Contributing" if docname == "contributing" else "Changelog"
        source[0] = f"# {title}\n\n`{name}` at the repository root is not written yet.\n"


def _root_links_as_paths(app: Any, doctree: Any) -> None:
    """In the pages that include a root file, a link to a repository file that is not a page of this site (the
    README, a test, a folder) shows its path, where it would otherwise be a reference that cannot resolve."""
    if app.env.docname not in ROOT_INCLUDES:
        return
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst":
            continue
        target = node["reftarget"].split("#")[0]
        if target.removesuffix(".md") in app.env.found_docs:
            continue
        text = node.astext()
        path = nodes.literal(target, target)
        node.replace_self([path] if text in ("", target) else [nodes.Text(f"{text} ("), path, nodes.Text(")")])


def _module_docstring_as_text(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """A module docstring is the method's algorithm box (aligned columns, indented steps): show it as written."""
    if what != "module" or not lines:
        return
    body = [f"   {line}" if line else "" for line in lines]
    lines[:] = [".. code-block:: text", "", *body, ""]


def setup(app: Any) -> None:
    app.connect("builder-inited", _copy_notebooks)
    app.connect("source-read", _tolerate_missing_root_files)
    app.connect("doctree-read", _root_links_as_paths)
    app.connect("autodoc-process-docstring", _module_docstring_as_text)

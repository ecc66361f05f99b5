"""Sphinx configuration for melsml's documentation (built with -W in CI)."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

project = "melsml"
author = "melsml developers"
copyright = "2026, melsml developers"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    # MathJax shipped with the build (a PyPI package), so the manual renders
    # its maths without network access
    "sphinx-mathjax-offline",
    "numpydoc",
    "myst_parser",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated/*.md"]
numpydoc_show_class_members = False
numpydoc_validation_checks: set = set()
autodoc_typehints = "none"
html_theme = "alabaster"
html_theme_options = {"page_width": "1180px", "sidebar_width": "220px"}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
suppress_warnings = ["myst.header"]

# Figures, tables and numbers of the tutorial and the validation page are made
# fresh at every build by running the code they show.
if not os.environ.get("MELSML_DOCS_SKIP_GENERATE"):
    subprocess.run(
        [sys.executable, str(HERE / "make_generated.py")],
        check=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )

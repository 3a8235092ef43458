"""effx_lab: the helper package of the effx-lab course on efficient Transformer inference.

Every technique is built twice: a readable NumPy reference (``<pkg>.reference``) and a fast PyTorch /
Triton version (``<pkg>.torch_ops``, ``<pkg>.kernels``) with the same names and signatures.

``effx_lab.device`` is imported first on purpose: without a GPU it switches on Triton's CPU interpreter,
which must happen before any Triton kernel is defined.
"""
from __future__ import annotations

from . import device  # noqa: F401  (first: configures TRITON_INTERPRET)

__version__ = "0.1.0"

#: Where the course lives; the Colab setup cell of every notebook installs from here.
#: Keep in sync with ``repository.url`` in _config.yml (tests/book/test_repo.py checks both).
REPO_URL = "https://github.com/effx-lab/effx-lab"

#: The git ref (branch or tag) the book is built from. The Colab launch button (``repository.branch`` in
#: _config.yml) opens the notebooks at this ref, and every notebook's setup cell installs the package from it
#: (``git+REPO_URL@COURSE_REF``), so a notebook opened from an older book keeps the package it was written for.
#: A release sets it to its tag with ``effx-lab pin <tag>``, which rewrites all three places at once.
COURSE_REF = "main"

__all__ = ["COURSE_REF", "REPO_URL", "__version__", "setup_notebook"]


def setup_notebook(seed: int = 0):
    """The second cell of every notebook: print the device, seed every generator, style the plots.

    Returns a seeded ``numpy.random.Generator`` for the notebook to use.
    """
    from . import viz

    viz.setup()
    device.print_summary()
    return device.seed_everything(seed)

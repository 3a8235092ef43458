"""Sphinx extension with the book's small fixes (loaded through _config.yml ``local_extensions``).

* sphinx-thebe 0.3.1 registers its inline configuration script on every ``env-before-read-docs``
  event, which Jupyter Book emits more than once per build; the page then declares
  ``const THEBE_JS_URL`` twice and the browser raises a SyntaxError. We drop exact duplicate
  script entries from each page's context (same file, same inline body, same attributes).
"""
from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    unique = []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", None) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique  # in place: later handlers append to this same list


def setup(app):
    # Early (priority 1): html-page-context is emitted with emit_firstresult, so a late handler may
    # never run once a theme handler returns a value. The duplicates are already in the list by now.
    app.connect("html-page-context", _dedupe_scripts, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}

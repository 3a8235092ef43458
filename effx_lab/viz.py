"""Plotly figures in one house style that render everywhere: Jupyter, Colab, the book.

Four problems this module solves:

* Inside a kernel plotly's default renderer emits a MIME bundle the built book silently
  drops. When the book is built, the Makefile sets ``EFFX_PLOTLY_RENDERER=book``;
  :func:`setup` then switches to the renderer registered here, which writes a ``<div>``
  plus a small script and *no* copy of plotly.js: the book serves ``plotly.min.js``
  once, from its own static folder, so pages stay small and work with no network. In
  Jupyter and Colab plotly's own renderers are kept (they draw the house layout too).
* One style for every figure, however it was built (these helpers, ``go.Figure``,
  ``make_subplots``): the template holds the defaults, and :func:`house_layout`, which
  every renderer applies when a figure is shown, places what a notebook cannot get
  right for every width. Top to bottom: the title and its subtitle (details, the device
  stamp), the dropdown menu in its own band, the plot, the x axis, the slider, and the
  legend below everything. No fixed width; no text under 10 px; log axes labelled at
  powers of ten (or at 1-2-5 steps when fewer than three powers are in view), minor
  ticks unlabelled; plotly's toolbar only on hover, and not at all on a phone. In the
  book a small script fits each figure to the width it is drawn at: long titles wrap,
  and at phone widths side-by-side subplots stack.
* Figures that must stay interactive in the static book use plotly's own sliders and
  dropdowns over precomputed traces (:func:`slider_figure`, :func:`dropdown_figure`); no
  kernel is needed to move them.
* Every measured figure names the device it came from (:func:`stamp`); titles stay short
  (:func:`set_title` moves the details into the subtitle). Package source is shown with
  :func:`show_source`: highlighted, folded, readable offline.
"""
from __future__ import annotations

import base64
import html as _html
import inspect
import json
import math
import os
import sys
import textwrap
import uuid
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from ._validate import check_bool, check_int, describe

__all__ = [
    "COLORS",
    "HOUSE_CONFIG",
    "MAX_TITLE_CHARS",
    "MIN_FONT_PX",
    "TEMPLATE_NAME",
    "bar",
    "dropdown_figure",
    "house_layout",
    "line",
    "set_title",
    "setup",
    "show_source",
    "slider_figure",
    "stamp",
]

TEMPLATE_NAME = "effx"
#: No text of a figure is drawn smaller (tick labels, legends, sunburst labels...).
MIN_FONT_PX = 10
#: A longer title does not fit a phone on one line: put the details in the subtitle.
MAX_TITLE_CHARS = 60
#: Figure height (px) when the figure sets none; the book renderer always writes one.
DEFAULT_HEIGHT = 480
#: Below this width (px) the book's script stacks side-by-side subplots and hides the
#: toolbar.
NARROW_PX = 600
_STAMP_ONE_LINE = 110  # characters of subtitle that fit one line in the book's column
_STAMP_PREFIX = "measured on "
_MENU_LABEL = "effx-menu-label"  # the name of the annotation labelling a dropdown menu
_MENU_PAD_B = 6  # px between the menu band and the plot area
_SLIDER_PAD_T = 64  # px from the plot area to a slider: tick labels and the x title
_TITLE_PAD = 10  # px above the title

#: The course's colour cycle: colour-blind-safe (Okabe-Ito), reference first.
COLORS = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7",
    "#E69F00", "#56B4E9", "#F0E442", "#000000",
]

#: plotly.js configuration of every renderer: the toolbar only on hover (the book hides
#: it on phones), with only the buttons a reader uses (download, zoom, pan, reset); no
#: "Share chart" (newer plotly.js uploads the figure to Plotly Cloud; this is offline).
HOUSE_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "displayModeBar": "hover",
    "showSendToCloud": False,
    "modeBarButtonsToRemove": [
        "select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d",
        "toggleSpikelines", "hoverClosestCartesian", "hoverCompareCartesian",
        "sendChartToCloud", "sendDataToCloud",
    ],
}


def _make_template() -> go.layout.Template:
    base = pio.templates["plotly_white"]
    t = go.layout.Template(base)
    t.layout.colorway = COLORS
    t.layout.font = dict(
        family="Inter, Helvetica, Arial, sans-serif", size=13, color="#222"
    )
    # The title block (title, subtitle) hangs from the top of the figure and reserves
    # its height (automargin): nothing below it climbs into it. (The book's script sets
    # the top margin itself, from what is drawn.)
    t.layout.title = dict(
        x=0.0, xanchor="left", xref="container", y=1.0, yanchor="top", yref="container",
        automargin=True, pad=dict(t=_TITLE_PAD, l=10, b=10), font=dict(size=16),
        subtitle=dict(font=dict(size=12, color="#555")),
    )
    # Axes, menus and the legend push the margins they need.
    t.layout.margin = dict(l=10, r=10, t=10, b=10, pad=0)
    # At the bottom of the figure, in the figure's coordinates: the legend reserves its
    # rows under the x axis and the slider, never over the title or the data; rows wrap
    # at the figure's width.
    t.layout.legend = dict(
        orientation="h", xref="container", x=0.0, xanchor="left", yref="container",
        y=0.0, yanchor="bottom", bgcolor="rgba(255,255,255,0)", font=dict(size=12),
    )
    # Labels that would shrink under the minimum are hidden (the hover shows them).
    t.layout.uniformtext = dict(minsize=MIN_FONT_PX, mode="hide")
    t.layout.hoverlabel = dict(namelength=-1, font=dict(size=12))
    for axis in (t.layout.xaxis, t.layout.yaxis):
        axis.automargin = True
        axis.tickfont = dict(size=12)
        axis.title = dict(standoff=8, font=dict(size=13))
    t.layout.annotationdefaults = dict(font=dict(size=12))
    t.layout.autosize = True  # a fixed width overflows the book's content column
    return t


# ------------------------------------------------------------------------------------
# The house layout, applied to every figure when it is shown


def _copy(obj: Any) -> Any:
    """Copy the dicts and lists of a figure dict; arrays and scalars are shared."""
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_copy(v) if isinstance(v, (dict, list, tuple)) else v for v in obj]
    return obj


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
        x, (bool, np.bool_)
    )


def _clamp_size(size: Any) -> Any:
    if _is_number(size):
        return float(MIN_FONT_PX) if size < MIN_FONT_PX else size
    if isinstance(size, (list, tuple, np.ndarray)):
        return [_clamp_size(s) for s in size]
    return size


def _clamp_fonts(obj: Any) -> None:
    """Raise every font size under MIN_FONT_PX (layout, traces, menus) to it."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, dict):
                if key.endswith("font") and "size" in value:
                    value["size"] = _clamp_size(value["size"])
                _clamp_fonts(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        _clamp_fonts(item)
        if _is_number(obj.get("minsize")):
            obj["minsize"] = max(obj["minsize"], MIN_FONT_PX)


def _values(v: Any) -> np.ndarray:
    """The positive finite numbers of a trace coordinate (list, array, base64 dict)."""
    if v is None or isinstance(v, str):
        return np.empty(0)
    if isinstance(v, dict) and "bdata" in v and "dtype" in v:
        v = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    try:
        items = np.asarray(v, dtype=object).ravel()
    except Exception:
        return np.empty(0)
    out = [float(x) for x in items if _is_number(x) and math.isfinite(float(x))]
    return np.asarray([x for x in out if x > 0])


def _axis_extent(
    fig: dict, axis_key: str, visible: Sequence[Any] | None = None
) -> tuple[float, float] | None:
    """(low, high) of a log axis: its range if set, else the data of visible traces."""
    rng = (fig["layout"].get(axis_key) or {}).get("range")
    if isinstance(rng, (list, tuple)) and len(rng) == 2 and all(map(_is_number, rng)):
        lo, hi = sorted(rng)
        return 10.0**lo, 10.0**hi
    letter, ref = axis_key[0], axis_key[0] + axis_key[len("xaxis"):]
    found = []
    for i, trace in enumerate(fig.get("data", [])):
        shown = trace.get("visible", True) if visible is None else visible[i]
        if shown is False or shown == "legendonly":
            continue
        if trace.get(f"{letter}axis", letter) == ref:
            found.append(_values(trace.get(letter)))
    values = np.concatenate(found) if found else np.empty(0)
    if values.size == 0:
        return None
    return float(values.min()), float(values.max())


def _tick_text(v: float) -> str:
    """A tick label: 1000, 0.005, 2.5 between 0.001 and 99999, else 5e-4."""
    if 1e-3 <= abs(v) < 1e5:
        return np.format_float_positional(
            v, precision=3, unique=True, fractional=False, trim="-"
        )
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# What _log_ticks may set on an axis: a view that uses none of it resets it.
_LOG_TICK_PROPS = (
    "tickmode", "dtick", "tick0", "tickvals", "ticktext", "exponentformat",
    "showexponent", "minor.dtick", "minor.ticks", "minor.ticklen", "minor.showgrid",
    "minor.gridcolor",
)
_MANTISSAS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8))


def _log_ticks(lo: float, hi: float) -> dict:
    """Tick settings (flat ``prop`` keys) for a log axis spanning [lo, hi].

    Three or more powers of ten in view: ticks at powers of ten (every k-th one over
    many decades) labelled 10^n, minor ticks at 2..9 unlabelled. Fewer: at least three
    ticks at 1-2-5 steps (finer over a fraction of a decade) labelled as plain numbers,
    so a reader never gets a single label or bare digits.
    """
    if not (0 < lo <= hi and math.isfinite(hi)):
        return {}
    low, high = math.log10(lo), math.log10(hi)
    powers = math.floor(high + 1e-9) - math.ceil(low - 1e-9) + 1
    if powers >= 3:
        step = max(1, math.ceil((high - low) / 7))  # at most about eight labels
        ticks = {"tickmode": "linear", "dtick": step, "tick0": 0,
                 "exponentformat": "power", "showexponent": "all"}
        if step == 1:
            ticks.update({"minor.dtick": "D1", "minor.ticks": "outside",
                          "minor.ticklen": 3, "minor.showgrid": True,
                          "minor.gridcolor": "#f3f3f3"})
        return ticks
    pad = max(0.04, 0.05 * (high - low))  # plotly pads the autorange a little
    decades = range(math.floor(low) - 1, math.ceil(high) + 2)
    for mantissas in _MANTISSAS:
        vals = [float(f"{m * 10.0**e:.6g}") for e in decades for m in mantissas]
        vals = [v for v in vals if low - pad <= math.log10(v) <= high + pad]
        if len(vals) >= 3 or len(vals) == 2 and mantissas is _MANTISSAS[-1]:
            return {"tickmode": "array", "tickvals": vals,
                    "ticktext": [_tick_text(v) for v in vals]}
    return {}  # a sliver of a decade: plotly's own ticks


def _nest(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def _steps(fig: dict) -> list[dict]:
    """Every menu button and slider step of the figure."""
    layout = fig["layout"]
    controls = [*(layout.get("updatemenus") or []), *(layout.get("sliders") or [])]
    return [
        step
        for control in controls
        for step in [*(control.get("buttons") or []), *(control.get("steps") or [])]
    ]


def _step_axis_type(step: dict, axis_key: str, initial: Any) -> Any:
    for arg in step.get("args") or []:
        if isinstance(arg, dict):
            if f"{axis_key}.type" in arg:
                return arg[f"{axis_key}.type"]
            if isinstance(arg.get(axis_key), dict) and "type" in arg[axis_key]:
                return arg[axis_key]["type"]
    return initial


def _is_axis_key(key: str) -> bool:
    return key in ("xaxis", "yaxis") or (
        key.startswith(("xaxis", "yaxis")) and key[5:].isdigit()
    )


def _style_log_axes(fig: dict) -> None:
    """Powers-of-ten (or 1-2-5) ticks on every log axis, in every view of its menus."""
    layout, n = fig["layout"], len(fig.get("data", []))
    steps = [s for s in _steps(fig) if s.get("method") in ("update", "relayout")]
    for key in [k for k in layout if _is_axis_key(k)]:
        axis = layout[key]
        if not isinstance(axis, dict):
            continue
        chosen = any(axis.get(k) is not None for k in ("dtick", "tickvals", "nticks"))
        if chosen or axis.get("tickmode") == "array":
            continue  # the notebook chose its ticks
        types = [_step_axis_type(s, key, axis.get("type")) for s in steps]
        if axis.get("type") != "log" and "log" not in types:
            continue
        if axis.get("type") == "log":
            extent = _axis_extent(fig, key)
            axis.update(_nest(_log_ticks(*extent)) if extent else {})
        for step, kind in zip(steps, types):
            # Each view sets every tick property: no view keeps the ticks of another.
            args = step.setdefault("args", [])
            first = args[0] if args and isinstance(args[0], dict) else {}
            visible = first.get("visible")
            if step.get("method") != "update" or not (
                isinstance(visible, (list, tuple)) and len(visible) == n
            ):
                visible = None
            extent = _axis_extent(fig, key, visible) if kind == "log" else None
            ticks = _log_ticks(*extent) if extent else {}
            update = {f"{key}.{prop}": ticks.get(prop) for prop in _LOG_TICK_PROPS}
            if not ticks:
                update[f"{key}.tickmode"] = "auto"
            at = 0 if step.get("method") == "relayout" else 1
            while len(args) <= at:
                args.append({})
            args[at] = {**(args[at] or {}), **update}


def _menu_label_width(text: str, size: float) -> int:
    return int(0.6 * size * len(text)) + 12


def _style_controls(fig: dict) -> None:
    layout = fig["layout"]
    annotations = layout.get("annotations") or []
    labels = [a for a in annotations if a.get("name") == _MENU_LABEL]
    base_size = (layout.get("font") or {}).get("size") or 13
    for i, menu in enumerate(layout.get("updatemenus") or []):
        if menu.get("visible") is False:
            continue
        label = labels[i] if i < len(labels) else None
        text = str(label.get("text", "")) if label else ""
        label_px = _menu_label_width(text, base_size) if label else 0
        pad = dict(menu.get("pad") or {})
        pad.update(t=0, r=0, b=_MENU_PAD_B, l=label_px)
        # Above the plot area, left-aligned, right of its label, in the band the menu
        # reserves (it pushes the top margin, under the title block): closed, it covers
        # nothing; open, it drops over the plot only.
        menu.update(x=0.0, xanchor="left", y=1.0, yanchor="bottom", pad=pad)
        if menu.get("type", "dropdown") == "dropdown":
            menu["direction"] = "down"
        menu.setdefault("bgcolor", "#ffffff")
        menu.setdefault("bordercolor", "#bbbbbb")
        menu["font"] = {"size": 12, **(menu.get("font") or {})}
        if label is not None:
            label.update(x=0.0, xref="paper", xanchor="left", y=1.0, yref="paper",
                         yanchor="bottom", yshift=_MENU_PAD_B + 4, showarrow=False)
    x_titled = bool(((layout.get("xaxis") or {}).get("title") or {}).get("text"))
    for slider in layout.get("sliders") or []:
        pad = dict(slider.get("pad") or {})
        pad["t"] = max(pad.get("t") or 0, _SLIDER_PAD_T if x_titled else 40)
        slider.update(pad=pad, y=0.0, yanchor="top", x=0.0, xanchor="left", len=1.0)


def _top_band(fig: dict) -> int:
    """Pixels above the plot for the paper annotations on top of it (subplot titles)."""
    need = 0
    for a in fig["layout"].get("annotations") or []:
        if a.get("name") == _MENU_LABEL or a.get("yref", "y") != "paper":
            continue
        y, anchor = a.get("y"), a.get("yanchor", "auto")
        if _is_number(y) and y >= 0.99 and anchor in ("bottom", "auto"):
            lines = str(a.get("text", "")).count("<br>") + 1
            size = (a.get("font") or {}).get("size") or 12
            need = max(need, int(lines * size * 1.3) + 20 + int(a.get("yshift") or 0))
    return need


def house_layout(fig: go.Figure | Mapping[str, Any]) -> dict:
    """The figure as a dict in the house layout: what every renderer draws.

    The figure given is not changed. The dict has:

    * no fixed width (the figure fills its column), and a height (default 480 px);
    * the title top left, reserving its lines; details and the device stamp in its
      subtitle;
    * the legend below the plot (rows under the x axis and the slider), wherever the
      figure put it;
    * dropdown menus above the plot in their own band, labelled on their left; sliders
      under the x axis;
    * margins that only the axes, menus and legend grow (and a band for subplot titles);
    * every font at least :data:`MIN_FONT_PX`, labels that would shrink below it hidden;
    * log axes labelled at powers of ten (or 1-2-5 steps), minor ticks unlabelled, in
      every view a menu or slider shows.
    """
    if isinstance(fig, go.Figure):
        fig_dict = fig.to_dict()
    elif isinstance(fig, Mapping):
        fig_dict = dict(fig)
    else:
        raise TypeError(
            f"fig must be a plotly Figure or a figure dict, got {describe(fig)}"
        )
    out = _copy(fig_dict)
    out.setdefault("data", [])
    layout = out.setdefault("layout", {})
    if not isinstance(layout, dict):
        raise TypeError(f"fig['layout'] must be a dict, got {describe(layout)}")
    layout.pop("width", None)
    layout["autosize"] = True
    if not (_is_number(layout.get("height")) and layout["height"] > 0):
        layout["height"] = DEFAULT_HEIGHT
    title = layout.get("title")
    title = {"text": title} if isinstance(title, str) else dict(title or {})
    for key in ("x", "xanchor", "xref", "y", "yanchor", "yref", "automargin", "pad"):
        title.pop(key, None)  # the template's place: top left, reserving its lines
    layout["title"] = title
    legend = dict(layout.get("legend") or {})
    for key in ("x", "xanchor", "xref", "y", "yanchor", "yref", "orientation"):
        legend.pop(key, None)  # the template's place: below everything
    layout["legend"] = legend
    margin = dict(layout.get("margin") or {})
    layout["margin"] = {
        "l": min(int(margin.get("l") or 10), 40),  # the y axis pushes what it needs
        "r": min(int(margin.get("r") or 10), 40),
        "b": 10,
        "t": max(10, _top_band(out)),
        "pad": 0,
    }
    _style_controls(out)
    _style_log_axes(out)
    _clamp_fonts(out)
    return out


# ------------------------------------------------------------------------------------
# Renderers

# Runs in the browser, once per page (each figure's script defines it if missing). It
# measures the width the figure is drawn at and wraps the title, subtitle, annotations
# and axis titles to it; on a phone (below NARROW_PX) it also wraps legend entries,
# stacks side-by-side subplots and hides the toolbar. After each draw, fit() measures
# the title block and the band under it (menus, subplot titles) and sets the top margin
# so that nothing overlaps (plotly misplaces a title of several lines). It redraws when
# the width changes.
_FIT_JS_SOURCE = r"""
window.effxPlot = window.effxPlot || (function () {
  var NARROW = %(narrow)d, MODEBAR = 130, PAD = 12, TITLE_PAD = %(title_pad)d, GAP = 10;
  var TOP_FREE = 60, MAX_FITS = 6, BR = /<br\s*\/?>/i, canvas = null;
  function clone(o) { return JSON.parse(JSON.stringify(o)); }
  function pick() {
    for (var i = 0; i < arguments.length; i++) {
      if (arguments[i] != null) { return arguments[i]; }
    }
  }
  function at(o, path) {
    path.split(".").forEach(function (k) { o = o == null ? undefined : o[k]; });
    return o;
  }
  function measure(text, size, family) {
    canvas = canvas || document.createElement("canvas");
    var ctx = canvas.getContext("2d");
    ctx.font = size + "px " + family;
    return ctx.measureText(String(text).replace(/<[^>]*>/g, "")).width;
  }
  function wrap(text, width, size, family) {
    if (typeof text !== "string" || !text || width < 60) { return text; }
    return text.split(BR).map(function (line) {
      var out = [], cur = "";
      line.split(" ").forEach(function (w) {
        var next = cur ? cur + " " + w : w;
        if (cur && measure(next, size, family) > width) { out.push(cur); cur = w; }
        else { cur = next; }
      });
      out.push(cur);
      return out.join("<br>");
    }).join("<br>");
  }
  function cellsOf(L) {
    var cells = [];
    Object.keys(L).forEach(function (k) {
      var m = /^xaxis(\d*)$/.exec(k);
      if (!m || !L[k] || L[k].overlaying) { return; }
      var anchor = L[k].anchor || "y" + m[1];
      if (!/^y\d*$/.test(anchor)) { return; }
      var yk = "yaxis" + anchor.slice(1), ya = L[yk] || {};
      cells.push({x: k, y: yk, ref: "x" + m[1], xd: L[k].domain || [0, 1],
                  yd: ya.domain || [0, 1]});
    });
    return cells;
  }
  function sideBySide(cells) {
    return cells.some(function (a) {
      return cells.some(function (b) {
        var rows = Math.min(a.yd[1], b.yd[1]) - Math.max(a.yd[0], b.yd[0]);
        return a !== b && a.xd[1] <= b.xd[0] + 0.01 && rows > 0.05;
      });
    });
  }
  function longestCategory(data) {
    var longest = 0;
    data.forEach(function (t) {
      if (!Array.isArray(t.x) || typeof t.x[0] !== "string" || t.orientation === "h") {
        return;
      }
      t.x.forEach(function (v) {
        String(v).split(BR).forEach(function (p) {
          longest = Math.max(longest, p.length);
        });
      });
    });
    return longest;
  }
  function hasColorbar(t) {
    return !!t.colorbar || (t.showscale !== false &&
      /^(heatmap|contour|histogram2d|histogram2dcontour)$/.test(t.type || ""));
  }
  function stack(L, data) {
    var cells = cellsOf(L);
    if (!sideBySide(cells)) { return 0; }
    cells.sort(function (a, b) { return (b.yd[1] - a.yd[1]) || (a.xd[0] - b.xd[0]); });
    var n = cells.length, cellPx = 230;
    var gapPx = 90 + Math.min(160, 6 * longestCategory(data));
    var plotPx = n * cellPx + (n - 1) * gapPx, h = cellPx / plotPx, g = gapPx / plotPx;
    var byRef = {};
    cells.forEach(function (c, i) {
      c.top = 1 - i * (h + g); c.bottom = Math.max(0, c.top - h);
      L[c.x].domain = [0, 1];
      L[c.y] = L[c.y] || {};
      L[c.y].domain = [c.bottom, c.top];
      byRef[c.ref] = c;
    });
    (L.annotations || []).forEach(function (a) {
      if (a.xref !== "paper" || a.yref !== "paper" || typeof a.x !== "number" ||
          typeof a.y !== "number") { return; }
      var c = cells.filter(function (c) {
        return a.x >= c.xd[0] - 0.01 && a.x <= c.xd[1] + 0.01 &&
               a.y >= c.yd[0] - 0.01 && a.y <= c.yd[1] + 0.03;
      })[0];
      if (!c) { return; }
      a.x = (a.x - c.xd[0]) / Math.max(1e-9, c.xd[1] - c.xd[0]);
      var fy = (Math.min(a.y, c.yd[1]) - c.yd[0]) / Math.max(1e-9, c.yd[1] - c.yd[0]);
      a.y = c.bottom + fy * (c.top - c.bottom);
    });
    var spans = {};
    data.forEach(function (t, i) {
      var c = byRef[t.xaxis || "x"], key = t.coloraxis || (hasColorbar(t) ? i : null);
      if (!c || key === null) { return; }
      var s = spans[key] || [c.bottom, c.top];
      spans[key] = [Math.min(s[0], c.bottom), Math.max(s[1], c.top)];
    });
    Object.keys(spans).forEach(function (key) {
      var s = spans[key], bar;
      if (/^\d+$/.test(key)) {
        data[+key].colorbar = Object.assign({}, data[+key].colorbar);
        bar = data[+key].colorbar;
      } else {
        L[key] = L[key] || {};
        L[key].colorbar = Object.assign({}, L[key].colorbar);
        bar = L[key].colorbar;
      }
      if (bar.orientation === "h") { return; }
      Object.assign(bar, {x: 1.02, xanchor: "left", y: (s[0] + s[1]) / 2,
                          yanchor: "middle", len: s[1] - s[0], lenmode: "fraction"});
    });
    var before = L.height || 480;
    L.height = Math.max(before, plotPx + 200);
    return L.height - before;
  }
  function adapt(L0, data0, W, modebar) {
    var L = clone(L0), T = at(L, "template.layout") || {}, data = data0, added = 0;
    var family = pick(at(L, "font.family"), at(T, "font.family"), "sans-serif");
    var base = pick(at(L, "font.size"), at(T, "font.size"), 12);
    if (typeof L.title !== "object" || L.title === null) { L.title = {text: L.title}; }
    var tSize = pick(at(L, "title.font.size"), at(T, "title.font.size"), base * 1.4);
    var titleW = W - 2 * PAD - (modebar ? MODEBAR : 0);
    var wrapTitle = function (t) { return wrap(t, titleW, tSize, family); };
    L.title.text = wrapTitle(L.title.text);
    L.title.automargin = false;  /* fit() sets the top margin from what is drawn */
    var sub = L.title.subtitle;
    if (sub && sub.text) {
      var sSize = pick(at(sub, "font.size"), at(T, "title.subtitle.font.size"), base);
      sub.text = wrap(sub.text, W - 2 * PAD, sSize, family);
    }
    ["updatemenus", "sliders"].forEach(function (kind) {
      (L[kind] || []).forEach(function (m) {
        (m.buttons || m.steps || []).forEach(function (b) {
          var a = b.args && b.args[1];
          if (a && typeof a["title.text"] === "string") {
            a["title.text"] = wrapTitle(a["title.text"]);
          }
        });
      });
    });
    if (W < NARROW) {
      var lSize = pick(at(L, "legend.font.size"), at(T, "legend.font.size"), base);
      data = data0.map(function (t) {
        if (typeof t.name !== "string" || t.showlegend === false) { return t; }
        return Object.assign({}, t, {name: wrap(t.name, W - 70, lSize, family)});
      });
      added += stack(L, data);
    }
    var plotW = Math.max(120, W - 70);
    (L.annotations || []).forEach(function (a) {
      if (a.xref !== "paper" || typeof a.text !== "string" || typeof a.x !== "number") {
        return;
      }
      var x = Math.min(1, Math.max(0, a.x)), left = 50 + x * plotW;
      var right = (1 - x) * plotW + 10, anchor = a.xanchor;
      if (!anchor || anchor === "auto") {
        anchor = x < 1 / 3 ? "left" : (x > 2 / 3 ? "right" : "center");
      }
      var room = anchor === "left" ? right :
                 (anchor === "right" ? left : 2 * Math.min(left, right));
      var aSize = pick(at(a, "font.size"), at(T, "annotationdefaults.font.size"), base);
      a.text = wrap(a.text, room - 8, aSize, family);
    });
    var height = L.height || 480;
    Object.keys(L).forEach(function (k) {
      var m = /^([xy])axis\d*$/.exec(k), ax = L[k];
      if (!m || !ax || !ax.title || typeof ax.title.text !== "string") { return; }
      var dom = ax.domain || [0, 1], span = dom[1] - dom[0];
      var room = m[1] === "x" ? (W - 90) * span : (height - 170) * span;
      var size = pick(at(ax, "title.font.size"), at(T, m[1] + "axis.title.font.size"),
                      base);
      ax.title.text = wrap(ax.title.text, room, size, family);
    });
    L.height = Math.round(height + added);
    return {layout: L, data: data};
  }
  function fit(gd) {
    var fl = gd._fullLayout, box = gd.getBoundingClientRect();
    if (!fl || !fl._size || !box.height || gd._effxFits >= MAX_FITS) { return; }
    var rel = function (el) {
      var r = el.getBoundingClientRect();
      return {top: r.top - box.top, bottom: r.bottom - box.top, h: r.height};
    };
    var g = gd.querySelector(".g-gtitle"), pad = at(fl, "title.pad.t") || 0;
    var padNew = pad, bottom = 0;
    if (g && g.getBoundingClientRect().height) {
      var t = rel(g);
      padNew = Math.max(TITLE_PAD, pad + TITLE_PAD + 2 - t.top);
      bottom = t.bottom + (padNew - pad);
    }
    var plotTop = fl._size.t, highest = plotTop;
    var band = ".updatemenu-header-group, .updatemenu-button, g.annotation";
    gd.querySelectorAll(band).forEach(function (el) {
      var r = rel(el);
      if (r.h && r.bottom <= plotTop + 2 && r.bottom > bottom - 2) {
        highest = Math.min(highest, r.top);
      }
    });
    var need = Math.round(Math.max(10, bottom + GAP + (plotTop - highest)));
    if (gd._effxBase === undefined) {
      gd._effxBase = {h: fl.height, t: Math.max(plotTop, TOP_FREE)};
    }
    if (Math.abs(need - plotTop) <= 1 && Math.abs(padNew - pad) <= 1) { return; }
    var height = Math.round(gd._effxBase.h + Math.max(0, need - gd._effxBase.t));
    gd._effxFits = (gd._effxFits || 0) + 1;
    gd.style.height = height + "px";
    Plotly.relayout(gd, {"title.pad.t": padNew, "margin.t": need, "height": height});
  }
  return function (id, data, layout, config) {
    var gd = document.getElementById(id);
    if (!gd || !window.Plotly) { return; }
    var shown = -1, timer = null;
    function draw(first) {
      var W = gd.clientWidth || (gd.parentElement ? gd.parentElement.clientWidth : 0);
      W = W || 700;
      if (!first && Math.abs(W - shown) < 24) { return; }
      shown = W;
      var cfg = Object.assign({}, config);
      if (W < NARROW) { cfg.displayModeBar = false; }
      var view = adapt(layout, data, W, cfg.displayModeBar !== false);
      gd.style.height = view.layout.height + "px";
      gd._effxBase = undefined;
      gd._effxFits = 0;
      if (first) {
        return Plotly.newPlot(gd, view.data, view.layout, cfg).then(function () {
          fit(gd);
          gd.on("plotly_afterplot", function () { fit(gd); });
        });
      }
      return Plotly.react(gd, view.data, view.layout, cfg);
    }
    draw(true);
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { draw(false); }, 250);
    });
  };
})();
""" % {"narrow": NARROW_PX, "title_pad": _TITLE_PAD}
_FIT_JS = "\n".join(line.strip() for line in _FIT_JS_SOURCE.strip().splitlines())

def _json(obj: Any) -> str:
    from plotly.io.json import to_json_plotly

    return to_json_plotly(obj)  # escapes "</" : safe inside <script>


class _BookRenderer(pio.base_renderers.MimetypeRenderer):
    """Writes the figure's div and script only; the book serves plotly.js once."""

    def __init__(self) -> None:
        self.config = dict(HOUSE_CONFIG)

    def to_mimebundle(self, fig_dict: dict) -> dict:
        fig = house_layout(fig_dict)
        div_id = str(uuid.uuid4())
        height = int(fig["layout"]["height"])
        data, layout = _json(fig.get("data", [])), _json(fig["layout"])
        config = json.dumps(self.config)
        html = (
            '<div class="effx-figure" style="width:100%;">'
            f'<div id="{div_id}" class="plotly-graph-div" '
            f'style="height:{height}px; width:100%;"></div>'
            f"<script>\nwindow.PLOTLYENV=window.PLOTLYENV || {{}};\n{_FIT_JS}\n"
            f'window.effxPlot("{div_id}", {data}, {layout}, {config});\n'
            "</script></div>"
        )
        return {"text/html": html}


_HOUSE_CLASSES: dict[type, type] = {}


def _house_class(cls: type) -> type:
    """A subclass of a plotly renderer class that draws figures in the house layout."""
    if getattr(cls, "_effx_house", False):
        return cls
    if cls not in _HOUSE_CLASSES:

        def to_mimebundle(self, fig_dict):
            return super(house, self).to_mimebundle(house_layout(fig_dict))

        attrs = {"to_mimebundle": to_mimebundle, "_effx_house": True}
        house = type(f"House{cls.__name__}", (cls,), attrs)
        _HOUSE_CLASSES[cls] = house
    return _HOUSE_CLASSES[cls]


def _house_notebook_renderers() -> None:
    """Plotly's renderers (Jupyter, Colab, VS Code...): house layout and config."""
    for name in list(pio.renderers):
        renderer = pio.renderers[name]
        if isinstance(renderer, _BookRenderer) or not isinstance(
            renderer, pio.base_renderers.MimetypeRenderer
        ):
            continue
        if isinstance(getattr(renderer, "config", None), dict):
            renderer.config = {**renderer.config, **HOUSE_CONFIG}
        elif hasattr(renderer, "config") and renderer.config is None:
            renderer.config = dict(HOUSE_CONFIG)
        try:
            renderer.__class__ = _house_class(type(renderer))
        except TypeError:  # a class that cannot be subclassed keeps plotly's layout
            pass


_SET_UP = False


def setup() -> None:
    """Register the house template and the book renderer; pick the renderer.

    Idempotent and cheap. ``EFFX_PLOTLY_RENDERER=book`` (set by ``make book``/``make
    test``) selects the offline book renderer; any other value or none leaves plotly's
    choice (Jupyter, Colab, VS Code...), whose renderers then draw the house layout with
    the house configuration (the toolbar on hover).
    """
    global _SET_UP
    pio.templates[TEMPLATE_NAME] = _make_template()
    pio.templates.default = TEMPLATE_NAME
    if "effx_book" not in pio.renderers or not isinstance(
        pio.renderers["effx_book"], _BookRenderer
    ):
        pio.renderers["effx_book"] = _BookRenderer()
    _house_notebook_renderers()
    if os.environ.get("EFFX_PLOTLY_RENDERER") == "book":
        pio.renderers.default = "effx_book"
    _SET_UP = True


def _ensure_setup() -> None:
    if not _SET_UP:
        setup()


# ------------------------------------------------------------------------------------
# Titles and provenance


def _check_figure(fig: Any) -> go.Figure:
    if not isinstance(fig, go.Figure):
        raise TypeError(
            f"fig must be a plotly.graph_objects.Figure, got {describe(fig)}"
        )
    return fig


def _subtitle_parts(fig: go.Figure) -> tuple[str, str]:
    """(detail, stamp) of the subtitle, as :func:`set_title` and :func:`stamp` wrote."""
    text = fig.layout.title.subtitle.text or ""
    at = text.find(_STAMP_PREFIX)
    if at < 0:
        return text, ""
    detail = text[:at]
    if detail.endswith("<br>"):
        detail = detail[: -len("<br>")]
    return detail, text[at:]


def _write_subtitle(fig: go.Figure, detail: str, stamp_text: str) -> None:
    text = "<br>".join(part for part in (detail, stamp_text) if part)
    fig.update_layout(title_subtitle=dict(text=text))


def set_title(fig: go.Figure, title: str, *, detail: str | None = None) -> go.Figure:
    """A short title (at most :data:`MAX_TITLE_CHARS` characters), the details under it.

    The title says what the figure shows ("KV cache vs weights"); shapes, settings and
    data go in ``detail``, a subtitle line above the device stamp (:func:`stamp` keeps
    it), so the title fits a phone on one line and nothing is lost. A longer title is
    kept, with a warning that names it.
    """
    _check_figure(fig)
    if not isinstance(title, str) or not title.strip():
        raise TypeError(f"title must be a non-empty str, got {describe(title)}")
    if detail is not None and not isinstance(detail, str):
        raise TypeError(f"detail must be a str or None, got {describe(detail)}")
    if len(title) > MAX_TITLE_CHARS:
        # A warning, not an error: a title built from a measurement may be a few
        # characters longer on another machine, and the book wraps it anyway.
        warnings.warn(
            f"title should be at most {MAX_TITLE_CHARS} characters to fit a phone, got "
            f"{len(title)}: {title!r}; move the details into detail=...",
            stacklevel=2,
        )
    _, stamp_text = _subtitle_parts(fig)
    fig.update_layout(title_text=title)
    _write_subtitle(fig, detail or "", stamp_text)
    return fig


def stamp(
    fig: go.Figure, device: str | None = None, *, note: str | None = None
) -> go.Figure:
    """Write "measured on <device>" under the title (default: the device summary).

    Every figure built from a measurement carries its provenance, so a reader never
    mistakes a 2-core laptop's timing for a GPU's. A detail line written by
    :func:`set_title` stays above it; a second stamp replaces the first.
    """
    _check_figure(fig)
    if device is None:
        from .device import summary

        device = summary()
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {describe(device)}")
    if note is not None and not isinstance(note, str):
        raise TypeError(f"note must be a str or None, got {describe(note)}")
    text = _STAMP_PREFIX + device + (f" · {note}" if note else "")
    if len(text) > _STAMP_ONE_LINE and note:  # one fact a line; a phone wraps further
        text = f"{_STAMP_PREFIX}{device}<br>{note}"
    detail, _ = _subtitle_parts(fig)
    _write_subtitle(fig, detail, text)
    return fig


# ------------------------------------------------------------------------------------
# Figure helpers


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {describe(value)}")
    return value


def line(
    x: Sequence[Any],
    ys: Mapping[str, Sequence[float]],
    *,
    title: str,
    xaxis_title: str,
    yaxis_title: str,
    log_x: bool = False,
    log_y: bool = False,
    markers: bool = True,
) -> go.Figure:
    """Several named series over one x axis, in the house style."""
    _ensure_setup()
    if not isinstance(ys, Mapping) or not ys:
        raise TypeError(
            f"ys must be a non-empty mapping name -> values, got {describe(ys)}"
        )
    try:
        n = len(x)
    except TypeError:
        raise TypeError(
            f"x must be a sequence of positions, got {describe(x)}"
        ) from None
    _check_str("title", title)
    _check_str("xaxis_title", xaxis_title)
    _check_str("yaxis_title", yaxis_title)
    log_x, log_y = check_bool("log_x", log_x), check_bool("log_y", log_y)
    mode = "lines+markers" if check_bool("markers", markers) else "lines"
    fig = go.Figure()
    for name, values in ys.items():
        if len(values) != n:
            raise ValueError(
                f"ys[{name!r}] must have {n} values like x, got {len(values)}"
            )
        fig.add_trace(go.Scatter(x=list(x), y=list(values), name=str(name), mode=mode))
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title,
                      template=TEMPLATE_NAME)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def bar(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    yaxis_title: str,
    text: Sequence[str] | None = None,
    log_y: bool = False,
) -> go.Figure:
    """A labelled bar chart in the house style."""
    _ensure_setup()
    if len(labels) != len(values):
        raise ValueError(
            "labels and values must have the same length, "
            f"got {len(labels)} and {len(values)}"
        )
    if text is not None and len(text) != len(values):
        raise ValueError(
            f"text must have {len(values)} entries like values, got {len(text)}"
        )
    _check_str("title", title)
    _check_str("yaxis_title", yaxis_title)
    log_y = check_bool("log_y", log_y)
    colors = [COLORS[i % len(COLORS)] for i in range(len(values))]
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), marker_color=colors,
                           text=list(text) if text is not None else None))
    fig.update_layout(title=title, yaxis_title=yaxis_title, template=TEMPLATE_NAME,
                      showlegend=False)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _control_figure(
    kind: str,
    values: Sequence[Any],
    make_traces: Callable[[Any], Iterable[go.BaseTraceType]],
    *,
    label: str,
    title: str | Callable[[Any], str],
    active: int,
    layout: Mapping[str, Any] | None,
) -> go.Figure:
    _ensure_setup()
    values = list(values)
    if not values:
        raise ValueError(
            "values must be a non-empty sequence of control positions, "
            "got an empty sequence"
        )
    if not callable(make_traces):
        raise TypeError(
            "make_traces must be a callable value -> traces, "
            f"got {describe(make_traces)}"
        )
    _check_str("label", label)
    if not (isinstance(title, str) or callable(title)):
        raise TypeError(
            f"title must be a str or a callable value -> str, got {describe(title)}"
        )
    if layout is not None and not isinstance(layout, Mapping):
        raise TypeError(
            "layout must be a mapping of layout properties or None, "
            f"got {describe(layout)}"
        )
    active = check_int("active", active, min_value=0, max_value=len(values) - 1)
    fig = go.Figure()
    owner: list[int] = []  # which control position each trace belongs to
    for i, v in enumerate(values):
        traces = list(make_traces(v))
        if not traces:
            raise ValueError(
                f"make_traces({v!r}) returned no traces; "
                "every position needs at least one"
            )
        for tr in traces:
            tr.visible = i == active
            fig.add_trace(tr)
            owner.append(i)

    def title_for(v: Any) -> str:
        return title(v) if callable(title) else title

    steps = []
    for i, v in enumerate(values):
        visible = [o == i for o in owner]
        steps.append(
            dict(
                method="update",
                label=str(v),
                args=[{"visible": visible}, {"title.text": title_for(v)}],
            )
        )
    fig.update_layout(title=title_for(values[active]), template=TEMPLATE_NAME)
    if layout:
        fig.update_layout(**layout)
    if kind == "slider":
        slider = dict(active=active, steps=steps, pad=dict(t=_SLIDER_PAD_T),
                      currentvalue=dict(prefix=f"{label}: "))
        fig.update_layout(sliders=[slider])
    else:
        # The menu and its label share a band above the plot (house_layout places them);
        # a long list opens downward over the plot, and plotly scrolls it when it is
        # taller than the figure.
        menu = dict(buttons=steps, active=active, direction="down", x=0.0,
                    xanchor="left", y=1.0, yanchor="bottom", pad=dict(b=_MENU_PAD_B))
        caption = dict(text=f"{label}:", name=_MENU_LABEL, x=0.0, xref="paper", y=1.0,
                       yref="paper", xanchor="left", yanchor="bottom",
                       yshift=_MENU_PAD_B + 4, showarrow=False)
        fig.update_layout(updatemenus=[menu], annotations=[caption])
    return fig


def slider_figure(
    values: Sequence[Any],
    make_traces: Callable[[Any], Iterable[go.BaseTraceType]],
    *,
    label: str,
    title: str | Callable[[Any], str],
    active: int = 0,
    layout: Mapping[str, Any] | None = None,
) -> go.Figure:
    """A figure with a plotly slider over precomputed positions, interactive offline.

    ``make_traces(value)`` returns the traces for one slider position; all positions are
    computed now and the slider only toggles visibility, so no kernel is needed.
    ``title`` may be a function of the value so the title can show the number the reader
    is looking at.
    """
    return _control_figure("slider", values, make_traces, label=label, title=title,
                           active=active, layout=layout)


def dropdown_figure(
    values: Sequence[Any],
    make_traces: Callable[[Any], Iterable[go.BaseTraceType]],
    *,
    label: str,
    title: str | Callable[[Any], str],
    active: int = 0,
    layout: Mapping[str, Any] | None = None,
) -> go.Figure:
    """Like :func:`slider_figure` with a dropdown menu: for categorical choices."""
    return _control_figure("dropdown", values, make_traces, label=label, title=title,
                           active=active, layout=layout)


# ------------------------------------------------------------------------------------
# Package source, highlighted and folded

# pygments styles, best first: WCAG-contrast colours on a light background come from the
# accessible-pygments plugin (the book's theme installs it; Colab has none), "default"
# ships with pygments itself
_SOURCE_STYLES = ("a11y-light", "default")
_SOURCE_BG, _SOURCE_FG, _SOURCE_BORDER = "#f8f8f8", "#1f2328", "#d0d7de"


def _public_name(obj: Any) -> str:
    """The dotted name a reader imports ``obj`` by (``effx_lab.quant.reference.pack``).

    Among the loaded modules of the same package that hold the object (or the class of a
    method) under its own name: a public one (no ``_module`` in the path) with the
    shortest path; else the module that defines it.
    """
    if inspect.ismodule(obj):
        return obj.__name__
    module = getattr(obj, "__module__", None) or ""
    qualname = (getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
                or type(obj).__name__)
    head = qualname.split(".")[0]
    owner = getattr(sys.modules.get(module), head, None)
    if not module or owner is None:
        return f"{module}.{qualname}" if module else qualname
    root = module.split(".")[0]
    candidates = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == root or name.startswith(root + ".")):
            continue
        if getattr(mod, head, None) is owner:
            private = any(part.startswith("_") for part in name.split("."))
            candidates.append((private, name.count("."), name))
    best = min(candidates)[2] if candidates else module
    return f"{best}.{qualname}"


class _SourceListing:
    """Highlighted source listings: HTML in notebooks and the book, else plain text."""

    def __init__(self, items: list[tuple[str, str]], collapsed: bool) -> None:
        self.items = items  # (dotted name, dedented source)
        self.collapsed = collapsed

    @staticmethod
    def _count(source: str) -> str:
        n = len(source.rstrip("\n").splitlines())
        return f"{n} line{'s' if n != 1 else ''}"

    def text(self) -> str:
        return "\n".join(
            f"Source of {name} ({self._count(source)}):\n{source.rstrip()}\n"
            for name, source in self.items
        )

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's text/plain
        p.text(self.text())

    def _repr_html_(self) -> str:
        try:
            from pygments import highlight
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import PythonLexer
        except ImportError:  # no pygments: the same block, not highlighted
            highlight = None
        if highlight is not None:
            formatter = HtmlFormatter(nowrap=True, noclasses=True, style=_source_style())
        # Every colour is inline and the block brings its own background: it reads the
        # same in a light or a dark theme, in JupyterLab, Colab and the book, with no
        # stylesheet and no script.
        box = (f"margin:0.4em 0;background:{_SOURCE_BG};color:{_SOURCE_FG};"
               f"border:1px solid {_SOURCE_BORDER};border-radius:4px;")
        summary = "cursor:pointer;padding:0.3em 0.6em;font-size:0.9em;"
        code = ("color:inherit;background:transparent;border:0;padding:0;"
                "font-weight:600;")
        pre = (f"margin:0;padding:0.6em 0.8em;background:{_SOURCE_BG};"
               f"color:{_SOURCE_FG};border:0;border-top:1px solid {_SOURCE_BORDER};"
               "border-radius:0 0 4px 4px;overflow-x:auto;font-size:0.85em;"
               "line-height:1.4;white-space:pre;")
        opened = "" if self.collapsed else " open"
        blocks = []
        for name, source in self.items:
            body = (
                _html.escape(source)
                if highlight is None
                else highlight(source, PythonLexer(), formatter)
            )
            blocks.append(
                f'<details class="effx-source"{opened} style="{box}">'
                f'<summary style="{summary}">Source of '
                f'<code style="{code}">{_html.escape(name)}</code> '
                f"({self._count(source)})</summary>"
                f'<pre class="effx-source-code" style="{pre}">{body}</pre></details>'
            )
        return "\n".join(blocks)


def _source_style() -> str:
    """The first of :data:`_SOURCE_STYLES` this pygments knows."""
    from pygments.styles import get_style_by_name
    from pygments.util import ClassNotFound

    for name in _SOURCE_STYLES[:-1]:
        try:
            get_style_by_name(name)
            return name
        except ClassNotFound:
            continue
    return _SOURCE_STYLES[-1]


def _source_of(obj: Any, where: str) -> tuple[str, str]:
    expected = "a module, class, function or method"
    if isinstance(obj, (str, bytes)) or obj is None:
        raise TypeError(f"{where} must be {expected}, got {describe(obj)}")
    # a Triton kernel (JITFunction, or the interpreter's wrapper) keeps its Python
    # function in .fn; without Triton a course kernel is that plain function already
    fn = getattr(obj, "fn", None)
    if callable(fn) and type(obj).__name__ in ("JITFunction", "InterpretedFunction"):
        obj = fn
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as exc:
        raise TypeError(
            f"{where} must be {expected} defined in Python source, "
            f"got {describe(obj)} ({exc})"
        ) from None
    return _public_name(obj), textwrap.dedent(source)


def _ipython_shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with Jupyter
        return None
    return get_ipython()


def show_source(*objs: Any, collapsed: bool = True) -> None:
    """Show the source of package functions, classes or modules, highlighted and folded.

    In a notebook and in the built book each object is a ``<details>`` block whose
    summary line reads "Source of `effx_lab.quant.reference.gptq_quantize` (42 lines)";
    a click unfolds the highlighted code (``collapsed=False`` shows it unfolded).
    Colours are inline, on the block's own light background: no script, no stylesheet,
    readable offline and in a dark theme. Outside IPython (a terminal, a script) it
    prints the plain source under the same one-line header.
    """
    if not objs:
        raise TypeError(
            "show_source needs at least one object (function, class, method or "
            "module), got none"
        )
    collapsed = check_bool("collapsed", collapsed)
    items = [_source_of(obj, f"objs[{i}]") for i, obj in enumerate(objs)]
    listing = _SourceListing(items, collapsed)
    if _ipython_shell() is None:
        print(listing.text(), end="")
        return
    from IPython.display import display

    display(listing)

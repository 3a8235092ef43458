"""Plotly figures in one house style that render everywhere: JupyterLab, Colab, and the static book.

Three problems this module solves (measured facts in ``TOOLCHAIN.md``):

* Inside a kernel plotly's default renderer emits a MIME bundle the built book silently drops. When the
  book is built, the Makefile sets ``EFFX_PLOTLY_RENDERER=book``; :func:`setup` then switches to the
  renderer registered here, which writes a ``<div>`` plus a ``Plotly.newPlot`` call and *no* copy of
  plotly.js: the book serves ``plotly.min.js`` once, from its own static folder, so pages stay small
  and work with no network. In Jupyter and Colab plotly's own renderers are left alone.
* Figures that must stay interactive in the static book use plotly's own sliders and dropdowns over
  precomputed traces (:func:`slider_figure`, :func:`dropdown_figure`); no kernel is needed to move them.
* Every measured figure names the device it came from (:func:`stamp`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import plotly.graph_objects as go
import plotly.io as pio

from ._validate import check_int, describe

__all__ = [
    "COLORS",
    "TEMPLATE_NAME",
    "bar",
    "dropdown_figure",
    "line",
    "setup",
    "slider_figure",
    "stamp",
]

TEMPLATE_NAME = "effx"
_LEGEND_Y = 0.94  # container fraction: just below the title
_LEGEND_Y_STAMPED = 0.89  # below the title and the "measured on" subtitle
_LEGEND_Y_STAMPED_2 = 0.85  # below a two-line subtitle (device, then the note)
_STAMP_ONE_LINE = 110  # characters of subtitle that fit on one line in the book's column

#: The course's colour cycle: colour-blind-safe (Okabe-Ito), reference first, optimized second.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _make_template() -> go.layout.Template:
    base = pio.templates["plotly_white"]
    t = go.layout.Template(base)
    t.layout.colorway = COLORS
    t.layout.font = dict(family="Inter, Helvetica, Arial, sans-serif", size=13, color="#222")
    # Title, then (optionally) the device stamp as its subtitle, then the legend in rows: all in
    # container coordinates at the top, so nothing overlaps however many rows the legend needs (the
    # margin grows to fit it). A legend at the right would steal half the book's narrow column.
    t.layout.title = dict(
        x=0.0, xanchor="left", yref="container", y=1.0, yanchor="top", pad=dict(t=12, l=8), font=dict(size=16)
    )
    t.layout.margin = dict(l=60, r=20, t=40, b=50)
    t.layout.legend = dict(
        orientation="h", yref="container", yanchor="top", y=_LEGEND_Y, xanchor="left", x=0,
        bgcolor="rgba(255,255,255,0.7)",
    )
    t.layout.hoverlabel = dict(namelength=-1)
    t.layout.autosize = True  # a fixed width overflows the book's content column
    return t


class _BookRenderer(pio.base_renderers.HtmlRenderer):
    """Writes the figure's div and script only; plotly.js itself is served once by the book."""

    def __init__(self) -> None:
        # No include_plotlyjs here: plotly < 6.1 rejects it in __init__ (TypeError), and it is passed where it
        # matters, to pio.to_html in to_mimebundle below. Keeping it out lets the package accept plotly 5.23+.
        super().__init__(connected=False, full_html=False, global_init=False)

    def to_mimebundle(self, fig_dict: dict) -> dict:
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=False,
            include_mathjax=False,  # MathJax would come from a CDN: keep LaTeX out of plot labels
            full_html=False,
            default_width="100%",
            default_height=480,
            validate=False,
            config={"displaylogo": False, "responsive": True},
        )
        return {"text/html": html}


_SET_UP = False


def setup() -> None:
    """Register the house template and the book renderer; choose the renderer from the environment.

    Idempotent and cheap. ``EFFX_PLOTLY_RENDERER=book`` (set by ``make book``/``make test``) selects the
    offline book renderer; any other value or none leaves plotly's choice (Jupyter, Colab, VS Code...).
    """
    global _SET_UP
    if TEMPLATE_NAME not in pio.templates:
        pio.templates[TEMPLATE_NAME] = _make_template()
    pio.templates.default = TEMPLATE_NAME
    if "effx_book" not in pio.renderers:
        pio.renderers["effx_book"] = _BookRenderer()
    if os.environ.get("EFFX_PLOTLY_RENDERER") == "book":
        pio.renderers.default = "effx_book"
    _SET_UP = True


def _ensure_setup() -> None:
    if not _SET_UP:
        setup()


def stamp(fig: go.Figure, device: str | None = None, *, note: str | None = None) -> go.Figure:
    """Write "measured on <device>" under the figure (default: :func:`effx_lab.device.summary`).

    Every figure built from a measurement carries its provenance, so a reader never mistakes a
    2-core laptop's timing for a GPU's.
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"fig must be a plotly.graph_objects.Figure, got {describe(fig)}")
    if device is None:
        from .device import summary

        device = summary()
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {describe(device)}")
    if note is not None and not isinstance(note, str):
        raise TypeError(f"note must be a str or None, got {describe(note)}")
    text = f"measured on {device}" + (f" · {note}" if note else "")
    two_lines = len(text) > _STAMP_ONE_LINE
    if two_lines and note:  # a long line is cut off at the figure's edge in the narrow book column
        text = f"measured on {device}<br>{note}"
    # The subtitle sits under the title, clear of axis titles, sliders and legends.
    fig.update_layout(title_subtitle=dict(text=text, font=dict(size=11, color="#666")))
    legend_y = _LEGEND_Y_STAMPED_2 if two_lines and note else _LEGEND_Y_STAMPED
    if fig.layout.legend.y is None or fig.layout.legend.y in (_LEGEND_Y, _LEGEND_Y_STAMPED, _LEGEND_Y_STAMPED_2):
        fig.update_layout(legend=dict(orientation="h", yref="container", yanchor="top", y=legend_y,
                                      xanchor="left", x=0))
    top = 75 if two_lines and note else 60
    if (fig.layout.margin.t or 0) < top:
        fig.update_layout(margin=dict(t=top))
    return fig


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
        raise TypeError(f"ys must be a non-empty mapping name -> values, got {describe(ys)}")
    n = len(x)
    fig = go.Figure()
    for name, values in ys.items():
        if len(values) != n:
            raise ValueError(f"ys[{name!r}] must have {n} values like x, got {len(values)}")
        fig.add_trace(go.Scatter(x=list(x), y=list(values), name=str(name), mode="lines+markers" if markers else "lines"))
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, template=TEMPLATE_NAME)
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
        raise ValueError(f"labels and values must have the same length, got {len(labels)} and {len(values)}")
    if text is not None and len(text) != len(values):
        raise ValueError(f"text must have {len(values)} entries like values, got {len(text)}")
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), text=list(text) if text is not None else None,
                           marker_color=[COLORS[i % len(COLORS)] for i in range(len(values))]))
    fig.update_layout(title=title, yaxis_title=yaxis_title, template=TEMPLATE_NAME, showlegend=False)
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
        raise ValueError("values must be a non-empty sequence of control positions, got an empty sequence")
    if not callable(make_traces):
        raise TypeError(f"make_traces must be a callable value -> traces, got {describe(make_traces)}")
    active = check_int("active", active, min_value=0, max_value=len(values) - 1)
    fig = go.Figure()
    owner: list[int] = []  # which control position each trace belongs to
    for i, v in enumerate(values):
        traces = list(make_traces(v))
        if not traces:
            raise ValueError(f"make_traces({v!r}) returned no traces; every position needs at least one")
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
        fig.update_layout(
            sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix=f"{label}: "), pad=dict(t=50))]
        )
    else:
        fig.update_layout(
            updatemenus=[
                dict(buttons=steps, active=active, x=1.0, xanchor="right", y=1.0, yanchor="bottom",
                     direction="down", pad=dict(b=4))
            ],
            annotations=[
                dict(text=f"{label}:", x=0.0, xref="paper", y=1.0, yref="paper", xanchor="left",
                     yanchor="bottom", yshift=8, showarrow=False)
            ],
        )
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
    """A figure with a plotly slider over precomputed positions: interactive in the static book.

    ``make_traces(value)`` returns the traces for one slider position; all positions are computed now
    and the slider only toggles visibility, so no kernel is needed. ``title`` may be a function of the
    value so the title can show the number the reader is looking at.
    """
    return _control_figure("slider", values, make_traces, label=label, title=title, active=active, layout=layout)


def dropdown_figure(
    values: Sequence[Any],
    make_traces: Callable[[Any], Iterable[go.BaseTraceType]],
    *,
    label: str,
    title: str | Callable[[Any], str],
    active: int = 0,
    layout: Mapping[str, Any] | None = None,
) -> go.Figure:
    """Like :func:`slider_figure` with a dropdown menu: for categorical choices (dtype, model, method)."""
    return _control_figure("dropdown", values, make_traces, label=label, title=title, active=active, layout=layout)

from __future__ import annotations

import json
import re

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly.subplots import make_subplots

from effx_lab import viz


def _book_html(fig) -> str:
    return pio.renderers["effx_book"].to_mimebundle(fig.to_dict())["text/html"]


def _call_args(html: str) -> tuple[list, dict, dict]:
    """The data, layout and config the book's script hands to plotly.js."""
    start = html.index("window.effxPlot(\"")
    decoder = json.JSONDecoder()
    pos = html.index(",", start) + 1
    values = []
    for _ in range(3):
        while html[pos] in " ,":
            pos += 1
        value, pos = decoder.raw_decode(html, pos)
        values.append(value)
    return values[0], values[1], values[2]


def test_book_renderer_emits_div_without_plotlyjs_or_cdn(monkeypatch):
    monkeypatch.setenv("EFFX_PLOTLY_RENDERER", "book")
    viz.setup()
    assert pio.renderers.default == "effx_book"
    fig = viz.line([1, 2, 3], {"a": [1, 4, 9]}, title="t", xaxis_title="x", yaxis_title="y")
    bundle = pio.renderers["effx_book"].to_mimebundle(fig.to_dict())
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html and 'class="plotly-graph-div"' in html  # effx_book.py looks for these
    assert len(html) < 50_000, "the book renderer must not embed plotly.js (4.8 MB) in every figure"
    assert "cdn" not in html.lower() and "https://" not in html


def test_book_renderer_draws_the_house_layout_with_the_house_config():
    viz.setup()
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name="a"))
    fig.update_layout(width=900, height=400, legend=dict(x=1.02, y=1), title="t")
    html = _book_html(fig)
    data, layout, config = _call_args(html)
    assert "width" not in layout and layout["autosize"] is True  # never a fixed width
    assert layout["height"] == 400 and "height:400px" in html.replace(" ", "")
    assert "x" not in layout["legend"] and "y" not in layout["legend"]  # the template's place: below
    assert config["displayModeBar"] == "hover" and config["displaylogo"] is False
    assert {"lasso2d", "sendChartToCloud"} <= set(config["modeBarButtonsToRemove"])  # offline
    assert data[0]["name"] == "a"


def test_setup_leaves_notebook_renderer_alone_but_styles_it(monkeypatch):
    monkeypatch.delenv("EFFX_PLOTLY_RENDERER", raising=False)
    before = pio.renderers.default
    viz.setup()
    viz.setup()  # idempotent
    assert pio.renderers.default == before
    assert pio.templates.default == viz.TEMPLATE_NAME
    for name in ("notebook", "plotly_mimetype", "colab"):
        renderer = pio.renderers[name]
        assert renderer.config["displayModeBar"] == "hover", name
        assert getattr(type(renderer), "_effx_house", False), name
    # plotly's own JSON bundle (JupyterLab, VS Code) carries the house layout and configuration
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1, 2]))
    fig.update_layout(width=700, legend=dict(x=0.02, y=0.98))
    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    drawn = bundle["application/vnd.plotly.v1+json"]
    assert "width" not in drawn["layout"] and "x" not in drawn["layout"]["legend"]
    assert drawn["config"]["displayModeBar"] == "hover"


def test_house_layout_places_title_legend_margins_and_leaves_the_figure_alone():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1, 2], name="s"))
    fig.update_layout(title=dict(text="t", x=0.5, y=0.9), legend=dict(x=0.02, y=0.98, orientation="v"),
                      margin=dict(t=120, l=200, b=140), width=800)
    before = fig.to_dict()
    out = viz.house_layout(fig)
    assert fig.to_dict() == before, "house_layout must not change the figure it is given"
    layout = out["layout"]
    assert layout["title"] == {"text": "t"}  # the template's geometry: top left, reserving its lines
    assert set(layout["legend"]) <= {"title", "font", "traceorder", "bgcolor", "bordercolor"}
    assert layout["margin"]["t"] == 10 and layout["margin"]["b"] == 10 and layout["margin"]["l"] <= 40
    assert layout["height"] == viz.DEFAULT_HEIGHT and "width" not in layout
    template = pio.templates[viz.TEMPLATE_NAME].layout
    assert template.legend.yref == "container" and template.legend.y == 0 and template.legend.yanchor == "bottom"
    assert template.title.yref == "container" and template.title.automargin is True


def test_house_layout_reserves_a_band_for_subplot_titles():
    fig = make_subplots(rows=1, cols=2, subplot_titles=("left panel", "right panel<br>two lines"))
    fig.add_trace(go.Bar(x=["a"], y=[1]), 1, 1)
    fig.add_trace(go.Bar(x=["a"], y=[2]), 1, 2)
    layout = viz.house_layout(fig)["layout"]
    assert layout["margin"]["t"] >= 2 * 16 * 1.3  # two lines of the 16 px subplot titles


def test_house_layout_raises_every_font_to_the_minimum():
    fig = go.Figure(go.Sunburst(ids=["a", "b"], labels=["a", "b"], parents=["", "a"],
                                insidetextfont=dict(size=6), textfont=dict(size=[4, 12])))
    fig.add_trace(go.Scatter(x=[1], y=[1], text=["x"], mode="text", textfont=dict(size=7)))
    fig.update_layout(font=dict(size=8), legend=dict(font=dict(size=9)), uniformtext=dict(minsize=4),
                      annotations=[dict(text="note", x=0, y=0, font=dict(size=5))])
    out = viz.house_layout(fig)
    sunburst, scatter = out["data"]
    assert sunburst["insidetextfont"]["size"] == viz.MIN_FONT_PX
    assert list(sunburst["textfont"]["size"]) == [viz.MIN_FONT_PX, 12]
    assert scatter["textfont"]["size"] == viz.MIN_FONT_PX
    layout = out["layout"]
    assert layout["font"]["size"] == layout["legend"]["font"]["size"] == viz.MIN_FONT_PX
    assert layout["annotations"][0]["font"]["size"] == viz.MIN_FONT_PX
    assert layout["uniformtext"]["minsize"] == viz.MIN_FONT_PX
    template = pio.templates[viz.TEMPLATE_NAME].layout
    assert template.uniformtext.minsize >= viz.MIN_FONT_PX and template.uniformtext.mode == "hide"


@pytest.mark.parametrize(
    "lo, hi, expected",
    [
        (1e-5, 1.0, "powers"),  # six decades: 10^n labels, minor ticks unlabelled
        (1.0, 100.0, "powers"),
        (13.5, 300.0, [20, 50, 100, 200]),  # one power of ten in view: 1-2-5 steps instead
        (1.0, 3.0, [1, 1.5, 2, 3]),
        (0.8, 1.1, [0.8, 1, 1.2]),
    ],
)
def test_log_ticks_label_powers_of_ten_or_one_two_five(lo, hi, expected):
    ticks = viz._log_ticks(lo, hi)
    if expected == "powers":
        assert ticks["dtick"] == 1 and ticks["exponentformat"] == "power" and ticks["minor.dtick"] == "D1"
        assert "tickvals" not in ticks
    else:
        assert ticks["tickmode"] == "array"
        assert ticks["tickvals"] == pytest.approx(expected)
        assert all(not re.search(r"e\+|^\d$|^0\.0{3}", t) or t.isdigit() for t in ticks["ticktext"])


def test_log_axes_get_ticks_from_the_data_unless_the_figure_chose_them():
    fig = viz.line([1, 10, 100, 1000], {"a": [2e-3, 1e-2, 1e-1, 1.5]}, title="t", xaxis_title="x",
                   yaxis_title="y", log_x=True, log_y=True)
    layout = viz.house_layout(fig)["layout"]
    assert layout["xaxis"]["dtick"] == 1 and layout["xaxis"]["minor"]["dtick"] == "D1"
    assert layout["yaxis"]["dtick"] == 1 and layout["yaxis"]["exponentformat"] == "power"
    fig.update_yaxes(tickvals=[0.01, 1])
    layout = viz.house_layout(fig)["layout"]
    assert layout["yaxis"]["tickvals"] == [0.01, 1] and "dtick" not in layout["yaxis"]
    linear = viz.house_layout(viz.line([1, 2], {"a": [1, 2]}, title="t", xaxis_title="x", yaxis_title="y"))
    assert "dtick" not in linear["layout"].get("yaxis", {})


def test_each_view_of_a_menu_gets_its_own_log_ticks():
    fig = viz.dropdown_figure(
        ["small", "wide"],
        lambda v: [go.Scatter(x=[1, 2], y=[20, 300] if v == "small" else [1e-4, 1e2])],
        label="view", title="t", layout=dict(yaxis=dict(type="log")),
    )
    out = viz.house_layout(fig)["layout"]
    assert out["yaxis"]["tickvals"] == pytest.approx([20, 50, 100, 200])  # the first view only
    small, wide = (b["args"][1] for b in out["updatemenus"][0]["buttons"])
    assert small["yaxis.tickvals"] == pytest.approx([20, 50, 100, 200]) and small["yaxis.dtick"] is None
    assert wide["yaxis.dtick"] == 1 and wide["yaxis.tickvals"] is None and wide["yaxis.tickmode"] == "linear"
    assert fig.layout.updatemenus[0].buttons[0].args[1] == {"title.text": "t"}  # the figure is unchanged


def test_a_menu_that_switches_the_axis_type_resets_ticks_on_linear_views():
    fig = viz.dropdown_figure(["log", "linear"], lambda v: [go.Scatter(x=[1, 2], y=[1e-3, 1.0])],
                              label="scale", title="t", layout=dict(yaxis=dict(type="log")))
    for button, kind in zip(fig.layout.updatemenus[0].buttons, ("log", "linear")):
        button.args = [button.args[0], {**button.args[1], "yaxis.type": kind}]
    log_view, linear_view = (b["args"][1] for b in viz.house_layout(fig)["layout"]["updatemenus"][0]["buttons"])
    assert log_view["yaxis.dtick"] == 1
    assert linear_view["yaxis.tickmode"] == "auto" and linear_view["yaxis.dtick"] is None
    assert linear_view["yaxis.tickvals"] is None and linear_view["yaxis.minor.dtick"] is None


def test_slider_figure_toggles_visibility_per_step():
    values = [1, 2, 4]
    fig = viz.slider_figure(
        values,
        lambda v: [go.Scatter(x=[0, 1], y=[0, v], name=f"v={v}"), go.Bar(x=["a"], y=[v])],
        label="scale",
        title=lambda v: f"scale {v}",
        active=1,
    )
    assert len(fig.data) == 6
    assert [t.visible for t in fig.data] == [False, False, True, True, False, False]
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["1", "2", "4"]
    assert steps[2].args[0]["visible"] == [False, False, False, False, True, True]
    assert steps[2].args[1]["title.text"] == "scale 4"
    assert fig.layout.title.text == "scale 2"
    fig.update_layout(xaxis_title="x")
    slider = viz.house_layout(fig)["layout"]["sliders"][0]
    assert slider["pad"]["t"] >= 60 and slider["y"] == 0 and slider["yanchor"] == "top"  # clear of the x title


def test_dropdown_figure_has_buttons_in_a_band_above_the_plot():
    fig = viz.dropdown_figure(["fp32", "int8"], lambda d: [go.Bar(x=[d], y=[1])], label="number format",
                              title="t", layout=dict(updatemenus=None))
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["fp32", "int8"]
    layout = viz.house_layout(fig)["layout"]
    menu, = layout["updatemenus"]
    label, = [a for a in layout["annotations"] if a.get("name") == viz._MENU_LABEL]
    assert label["text"] == "number format:" and label["xanchor"] == "left" and label["x"] == 0
    assert (menu["y"], menu["yanchor"], menu["x"], menu["xanchor"]) == (1.0, "bottom", 0.0, "left")
    assert menu["pad"]["l"] >= 6 * len("number format:")  # right of its label, never over it
    assert menu["direction"] == "down"


def test_stamp_names_the_device():
    fig = viz.bar(["a", "b"], [1, 2], title="t", yaxis_title="y")
    viz.stamp(fig, "GPU Test 9000")
    assert fig.layout.title.subtitle.text == "measured on GPU Test 9000"
    viz.stamp(fig, "GPU Test 9001")  # a second stamp replaces the first
    assert fig.layout.title.subtitle.text == "measured on GPU Test 9001"
    fig2 = viz.stamp(go.Figure())
    assert fig2.layout.title.subtitle.text.startswith("measured on")


def test_set_title_keeps_titles_short_and_details_above_the_stamp():
    fig = viz.line([1, 2], {"a": [1, 2]}, title="a long title", xaxis_title="x", yaxis_title="y")
    viz.stamp(fig, "CPU X", note="float32")
    viz.set_title(fig, "KV cache vs weights", detail="llama2-7b, bf16, batch 16")
    assert fig.layout.title.text == "KV cache vs weights"
    assert fig.layout.title.subtitle.text == "llama2-7b, bf16, batch 16<br>measured on CPU X · float32"
    viz.stamp(fig, "CPU Y")  # the detail line stays
    assert fig.layout.title.subtitle.text == "llama2-7b, bf16, batch 16<br>measured on CPU Y"
    viz.set_title(fig, "Short")
    assert fig.layout.title.subtitle.text == "measured on CPU Y"
    with pytest.warns(UserWarning, match=r"title should be at most 60 characters.*detail"):
        viz.set_title(fig, "x" * (viz.MAX_TITLE_CHARS + 1))
    assert fig.layout.title.text == "x" * (viz.MAX_TITLE_CHARS + 1)  # kept: the book wraps it
    with pytest.raises(TypeError, match="detail"):
        viz.set_title(fig, "ok", detail=3)
    with pytest.raises(TypeError, match="title"):
        viz.set_title(fig, "")
    with pytest.raises(TypeError, match="fig"):
        viz.set_title({"layout": {}}, "ok")


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: viz.slider_figure([], lambda v: [go.Scatter()], label="l", title="t"), ValueError, "values"),
        (lambda: viz.slider_figure([1], "nope", label="l", title="t"), TypeError, "make_traces"),
        (lambda: viz.slider_figure([1], lambda v: [], label="l", title="t"), ValueError, "no traces"),
        (lambda: viz.slider_figure([1], lambda v: [go.Scatter()], label="l", title="t", active=3), ValueError, "active"),
        (lambda: viz.slider_figure([1], lambda v: [go.Scatter()], label=2, title="t"), TypeError, "label"),
        (lambda: viz.dropdown_figure([1], lambda v: [go.Scatter()], label="l", title=3), TypeError, "title"),
        (lambda: viz.dropdown_figure([1], lambda v: [go.Scatter()], label="l", title="t", layout=[1]),
         TypeError, "layout"),
        (lambda: viz.line([1, 2], {"a": [1]}, title="t", xaxis_title="x", yaxis_title="y"), ValueError, "ys"),
        (lambda: viz.line(3, {"a": [1]}, title="t", xaxis_title="x", yaxis_title="y"), TypeError, "x must"),
        (lambda: viz.line([1], {"a": [1]}, title=None, xaxis_title="x", yaxis_title="y"), TypeError, "title"),
        (lambda: viz.line([1], {"a": [1]}, title="t", xaxis_title="x", yaxis_title="y", log_x=1),
         TypeError, "log_x"),
        (lambda: viz.bar(["a"], [1, 2], title="t", yaxis_title="y"), ValueError, "labels"),
        (lambda: viz.bar(["a"], [1], title="t", yaxis_title=None), TypeError, "yaxis_title"),
        (lambda: viz.stamp("fig"), TypeError, "fig"),
        (lambda: viz.house_layout("fig"), TypeError, "fig"),
        (lambda: viz.house_layout({"layout": 3}), TypeError, "layout"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_stamp_moves_a_long_note_to_a_second_line():
    short = viz.stamp(go.Figure(), "CPU X", note="float32")
    assert "<br>" not in short.layout.title.subtitle.text
    long_note = "causal, d = 256, e = 512, s = 128, c = 256, float32, one thread on CPU, batch 1, rounds 2"
    fig = viz.stamp(go.Figure(), "CPU AMD EPYC (2 cores, 24 GiB RAM), no GPU · PyTorch 2.13.0+cpu", note=long_note)
    first, second = fig.layout.title.subtitle.text.split("<br>")
    assert first.startswith("measured on CPU AMD EPYC") and second == long_note
    with pytest.raises(TypeError, match="note"):
        viz.stamp(go.Figure(), "CPU X", note=3)


# --------------------------------------------------------------------------------------------------
# show_source


def test_show_source_prints_plain_text_outside_ipython(monkeypatch, capsys):
    monkeypatch.setattr(viz, "_ipython_shell", lambda: None)
    assert viz.show_source(viz.set_title) is None
    out = capsys.readouterr().out
    n = len(__import__("inspect").getsource(viz.set_title).rstrip("\n").splitlines())
    assert out.startswith(f"Source of effx_lab.viz.set_title ({n} lines):\ndef set_title(")
    assert "<" + "details" not in out and "\x1b[" not in out


def test_show_source_displays_folded_highlighted_html_in_a_notebook(monkeypatch):
    shown = []
    monkeypatch.setattr(viz, "_ipython_shell", lambda: object())
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    viz.show_source(viz.stamp, viz._SourceListing.text, collapsed=True)
    listing, = shown
    html = listing._repr_html_()
    assert html.count("<details") == 2 and "<details class=\"effx-source\" open" not in html
    summaries = [re.sub(r"<[^>]+>", "", m) for m in re.findall(r"<summary[^>]*>(.*?)</summary>", html)]
    assert summaries[0].startswith("Source of effx_lab.viz.stamp (") and summaries[0].endswith(" lines)")
    assert summaries[1].startswith("Source of effx_lab.viz._SourceListing.text (")
    assert "<script" not in html and "<style" not in html and "class=\"highlight\"" not in html
    assert re.search(r"<span style=\"[^\"]*color: ?#[0-9a-fA-F]{3,6}", html), "no inline highlighting"
    box = re.search(r"<details class=\"effx-source\" style=\"([^\"]*)\"", html).group(1)
    pre = re.search(r"<pre class=\"effx-source-code\" style=\"([^\"]*)\"", html).group(1)
    for style in (box, pre):  # its own background and text colour: readable in a dark theme
        assert "background:#" in style and ";color:#" in style
    assert "overflow-x:auto" in pre
    assert "def text(self)" in re.sub(r"<[^>]+>", "", html).replace("&#39;", "'")  # a method, dedented
    assert repr(listing).startswith("Source of effx_lab.viz.stamp (")
    shown.clear()
    viz.show_source(viz, collapsed=False)
    assert "<details class=\"effx-source\" open" in shown[0]._repr_html_()
    assert re.search(r"Source of <code[^>]*>effx_lab.viz</code>", shown[0]._repr_html_())


def test_show_source_names_the_public_module_of_a_reexported_function(monkeypatch, capsys):
    from effx_lab.quant import reference as R

    monkeypatch.setattr(viz, "_ipython_shell", lambda: None)
    viz.show_source(R.gptq_quantize)
    assert capsys.readouterr().out.startswith("Source of effx_lab.quant.reference.gptq_quantize (")


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((), {}, TypeError, "at least one"),
        ((len,), {}, TypeError, r"objs\[0\] must be .*Python source"),
        ((viz.stamp, "viz.stamp"), {}, TypeError, r"objs\[1\] must be a module, class, function"),
        ((viz.stamp,), {"collapsed": "yes"}, TypeError, "collapsed"),
    ],
)
def test_show_source_bad_inputs(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        viz.show_source(*args, **kwargs)


def test_house_layout_keeps_the_data_and_reads_plotlys_binary_arrays():
    x = np.geomspace(1.0, 1e4, 9)
    fig = go.Figure(go.Scatter(x=x, y=x**0.5))
    fig.update_xaxes(type="log")
    fig_dict = fig.to_dict()  # plotly stores NumPy arrays as {"dtype", "bdata"}
    out = viz.house_layout(fig_dict)
    assert out["data"][0]["x"] == fig_dict["data"][0]["x"]
    assert out["layout"]["height"] == viz.DEFAULT_HEIGHT
    assert out["layout"]["xaxis"]["dtick"] == 1  # the extent was read from the encoded array
    assert viz._values(fig_dict["data"][0]["y"]) == pytest.approx(x**0.5)


def test_show_source_reads_a_triton_kernel_with_or_without_triton(capsys):
    """A kernel module's kernels are listed like any function (the decorator line included)."""
    from effx_lab.quant import kernels as K

    viz.show_source(K._quantize_rows_kernel)
    out = capsys.readouterr().out
    assert "def _quantize_rows_kernel(" in out


def test_show_source_html_without_the_accessible_styles_plugin(monkeypatch):
    """Colab has no accessible-pygments: the listing falls back to pygments' own style."""
    monkeypatch.setattr(viz, "_SOURCE_STYLES", ("no-such-style-anywhere", "default"))
    assert viz._source_style() == "default"
    listing = viz._SourceListing([("effx_lab.viz.stamp", "def stamp():\n    pass\n")], True)
    html = listing._repr_html_()
    assert "<details" in html and "stamp" in html and "style=" in html

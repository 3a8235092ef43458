from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from effx_lab import viz


def test_book_renderer_emits_div_without_plotlyjs_or_cdn(monkeypatch):
    monkeypatch.setenv("EFFX_PLOTLY_RENDERER", "book")
    viz.setup()
    assert pio.renderers.default == "effx_book"
    fig = viz.line([1, 2, 3], {"a": [1, 4, 9]}, title="t", xaxis_title="x", yaxis_title="y")
    bundle = pio.renderers["effx_book"].to_mimebundle(fig.to_dict())
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html
    assert len(html) < 50_000, "the book renderer must not embed plotly.js (4.8 MB) in every figure"
    assert "cdn" not in html.lower() and "https://" not in html


def test_setup_leaves_notebook_renderer_alone(monkeypatch):
    monkeypatch.delenv("EFFX_PLOTLY_RENDERER", raising=False)
    before = pio.renderers.default
    viz.setup()
    assert pio.renderers.default == before
    assert pio.templates.default == viz.TEMPLATE_NAME


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


def test_dropdown_figure_has_buttons():
    fig = viz.dropdown_figure(["fp32", "int8"], lambda d: [go.Bar(x=[d], y=[1])], label="dtype", title="t")
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["fp32", "int8"]


def test_stamp_names_the_device():
    fig = viz.bar(["a", "b"], [1, 2], title="t", yaxis_title="y")
    viz.stamp(fig, "GPU Test 9000")
    assert fig.layout.title.subtitle.text == "measured on GPU Test 9000"
    assert fig.layout.legend.y < viz._LEGEND_Y  # the legend moved down to make room
    fig2 = viz.stamp(go.Figure())
    assert fig2.layout.title.subtitle.text.startswith("measured on")


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: viz.slider_figure([], lambda v: [go.Scatter()], label="l", title="t"), ValueError, "values"),
        (lambda: viz.slider_figure([1], "nope", label="l", title="t"), TypeError, "make_traces"),
        (lambda: viz.slider_figure([1], lambda v: [], label="l", title="t"), ValueError, "no traces"),
        (lambda: viz.slider_figure([1], lambda v: [go.Scatter()], label="l", title="t", active=3), ValueError, "active"),
        (lambda: viz.line([1, 2], {"a": [1]}, title="t", xaxis_title="x", yaxis_title="y"), ValueError, "ys"),
        (lambda: viz.bar(["a"], [1, 2], title="t", yaxis_title="y"), ValueError, "labels"),
        (lambda: viz.stamp("fig"), TypeError, "fig"),
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
    assert fig.layout.legend.y < short.layout.legend.y  # the legend makes room for the second line
    assert fig.layout.margin.t >= 75
    with pytest.raises(TypeError, match="note"):
        viz.stamp(go.Figure(), "CPU X", note=3)

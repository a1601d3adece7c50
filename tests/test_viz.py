"Charts and widgets on histories in the trainer's format: content at known steps, units, legends, reference lines, in-place live redraws, the explorer."
import base64, io
import numpy as np
import pandas as pd
import pytest
from IPython.core.formatters import DisplayFormatter
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image
from kd_toolkit.curriculum import Curriculum, Linear, Step, figure_png
from kd_toolkit.viz import LiveLossChart, history_components, loss_explorer, plot_loss_breakdown, synthetic_history

def _lines(ax): return {l.get_label(): l for l in ax.get_lines()}
def _legend(ax): return [t.get_text() for t in ax.get_legend().get_texts()]
def _pixels(png):
    if isinstance(png, str): png = base64.b64decode(png)   # (as a display message carries it)
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))

def _hand_history():
    "Two components, hand-written numbers; an eval row (with the teacher's CE) between the training rows."
    return pd.DataFrame([
        dict(step=10, progress=0.1, loss=2.5, **{'raw/lm': 2.0, 'weight/lm': 1.0, 'weighted/lm': 2.0,
                                               'raw/kd': 5.0, 'weight/kd': 0.1, 'weighted/kd': 0.5}),
        dict(step=20, progress=0.2, loss=4.0, **{'raw/lm': 1.0, 'weight/lm': 1.0, 'weighted/lm': 1.0,
                                               'raw/kd': 3.0, 'weight/kd': 1.0, 'weighted/kd': 3.0}),
        {'step': 20, 'eval/loss': 3.5, 'eval/loss/lm': 1.1, 'eval/loss/kd': 2.4, 'eval/kl': 0.3, 'eval/teacher_log_ppl': 0.9},
        dict(step=30, progress=0.3, loss=1.5, **{'raw/lm': 0.5, 'weight/lm': 1.0, 'weighted/lm': 0.5,
                                               'raw/kd': 1.0, 'weight/kd': 1.0, 'weighted/kd': 1.0}),
    ])

def _check_drawn(fig):
    "Render; then every legend lies outside its axes' data area and inside the figure, and log axes show plain numbers."
    figure_png(fig)
    for ax in fig.axes:
        leg, area = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert not leg.overlaps(area), f"legend over the data of {ax.get_title()!r}"
        assert leg.x1 <= fig.bbox.x1 + 1 and leg.y0 >= -1, "legend cut off by the figure edge"
        if ax.get_yscale() == 'log':
            lo, hi = ax.get_ylim()
            labels = [t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
            assert len(labels) >= 2 and all(float(l) > 0 for l in labels), labels   # '6×10⁰'-style text would not parse

def test_breakdown_content_on_a_hand_history():
    h = _hand_history()
    assert history_components(h) == ['lm', 'kd']
    fig = plot_loss_breakdown(h)
    axw, axr = fig.axes
    assert [c.get_label() for c in axw.collections] == ['lm [nats/token]', 'kd [nats/token]']
    np.testing.assert_allclose(_lines(axw)['total (logged)'].get_ydata(), [2.5, 4.0, 1.5])
    top = axw.collections[1].get_paths()[0].vertices               # top band: lm + kd
    for s, v in [(10, 2.5), (20, 4.0), (30, 1.5)]: assert top[np.isclose(top[:, 0], s), 1].max() == pytest.approx(v)
    ev = _lines(axw)['eval loss (fixed weights)']
    assert list(ev.get_xdata()) == [20] and list(ev.get_ydata()) == [3.5]
    np.testing.assert_allclose(_lines(axr)['kd [nats/token]'].get_ydata(), [5.0, 3.0, 1.0])
    assert list(_lines(axr)['kd eval [nats/token]'].get_ydata()) == [2.4]
    assert axr.get_yscale() == 'log' and 'raw' in axr.get_title() and 'weighted' in axw.get_title()
    # units on every axis, every entry in the legend, the teacher's reference line
    assert [a.get_xlabel() for a in fig.axes] == ['optimizer step'] * 2
    assert axw.get_ylabel() == 'Σ weight·raw loss [nats/token]' and axr.get_ylabel() == 'raw loss (log) [nats/token]'
    assert _legend(axw) == ['lm [nats/token]', 'kd [nats/token]', 'total (logged)', 'eval loss (fixed weights)']
    assert _legend(axr) == ['lm [nats/token]', 'lm eval [nats/token]', 'teacher CE (eval) 0.9 [nats/token]',
                            'kd [nats/token]', 'kd eval [nats/token]']
    ref = _lines(axr)['teacher CE (eval) 0.9 [nats/token]']
    assert list(ref.get_ydata()) == [0.9, 0.9] and ref.get_color() == _lines(axr)['lm [nats/token]'].get_color()
    _check_drawn(fig)
    sm = _lines(plot_loss_breakdown(h, smooth=0.5).axes[1])['lm [nats/token]'].get_ydata()
    np.testing.assert_allclose(sm, [2.0, (2 * 0.5 + 1) / 1.5, (2 * 0.25 + 0.5 + 0.5) / 1.75])   # debiased EMA
    one = plot_loss_breakdown(h, components=['kd'], panels=('raw',), step_range=(15, 30))
    assert len(one.axes) == 1 and list(_lines(one.axes[0])['kd [nats/token]'].get_xdata()) == [20, 30]

def test_units_per_component_and_mixed_axes():
    "Feature losses are nmse, CE/KD nats; an axis with mixed units points to the legend; `units=` overrides."
    cur = Curriculum({'lm': 1.0, 'kd': 1.0, 'feature': 0.5, 'contrastive': 0.1})
    h = synthetic_history(100, log_every=10, eval_every=50, curriculum=cur)
    fig = plot_loss_breakdown(h, units={'feature': '1 − cos'})
    axw, axr = fig.axes
    assert _legend(axr) == ['lm [nats/token]', 'lm eval [nats/token]', 'teacher CE (eval) 0.45 [nats/token]',
                            'kd [nats/token]', 'kd eval [nats/token]', 'feature [1 − cos]', 'feature eval [1 − cos]',
                            'contrastive [InfoNCE/log N]', 'contrastive eval [InfoNCE/log N]']
    assert axr.get_ylabel() == 'raw loss (log) [units: see legend]' and axw.get_ylabel() == 'Σ weight·raw loss [units: see legend]'
    assert _legend(axw)[:4] == ['lm [nats/token]', 'kd [nats/token]', 'feature [1 − cos]', 'contrastive [InfoNCE/log N]']
    _check_drawn(fig)

def test_narrow_log_range_gets_plain_ticks():
    "One component that barely moves (4.16 .. 4.21 nats): no 4×10⁰ / 6×10⁰ ticks, at least two plain labels."
    h = pd.DataFrame([dict(step=s, loss=v, **{'raw/lm': v, 'weight/lm': 1.0, 'weighted/lm': v}) for s, v in [(1, 4.21), (2, 4.18), (3, 4.16)]])
    fig = plot_loss_breakdown(h, panels=('raw',))
    _check_drawn(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert not any(c in ''.join(labels) for c in '×^$') and all(4.1 <= float(l) <= 4.3 for l in labels), labels

def test_charts_display_as_png_without_a_matplotlib_backend():
    "The browser check's finding: a plain Figure shows as '<Figure size ...>' text in a fresh kernel; ours are PNGs."
    data, _ = DisplayFormatter().format(plot_loss_breakdown(_hand_history()))   # a fresh formatter = no %matplotlib inline
    assert data['image/png'][:4] == b'\x89PNG'
    ex = loss_explorer(_hand_history())
    import ipywidgets as W
    assert isinstance(ex.image, W.Image) and ex.image in ex.widget.children and ex.image.value[:4] == b'\x89PNG'
    assert not any(isinstance(w, W.Output) for w in ex.widget.children)
    assert ex.image.layout.align_self == 'flex-start' and ex.image.layout.max_width == '1200px'   # (the browser showed a 1-panel chart stretched, blurred)

@pytest.mark.parametrize('bad, msg', [
    (lambda h: plot_loss_breakdown(h.drop(columns='step')), "no 'step' column"),
    (lambda h: plot_loss_breakdown(h[['step', 'loss']]), "no 'raw/<component>' columns"),
    (lambda h: plot_loss_breakdown(h, components=['feature']), "available: ['lm', 'kd']"),
    (lambda h: plot_loss_breakdown(h, smooth=-0.1), 'smooth must be in [0, 1)'),
    (lambda h: plot_loss_breakdown(h, step_range=(30, 10)), 'first step > last step'),
    (lambda h: plot_loss_breakdown(h, panels=('total',)), 'panels must be'),
    (lambda h: plot_loss_breakdown(h.to_dict()), 'must be a pandas DataFrame'),
    (lambda h: LiveLossChart(every=0), 'every must be >= 1'),
])
def test_bad_inputs(bad, msg):
    with pytest.raises((ValueError, TypeError)) as e: bad(_hand_history())
    assert msg in str(e.value), str(e.value)

def test_live_chart_100_updates_leave_one_display_output():
    InteractiveShell.instance()                                    # a shell, as in a notebook
    h = synthetic_history(300, log_every=3, eval_every=None)      # 100 logged rows
    live = LiveLossChart(every=50)
    with capture_output() as cap:
        for i in range(1, len(h) + 1): live.update(h.iloc[:i])
    outs = cap.outputs
    new = [o for o in outs if not o.update]
    assert len(new) == 1                                           # one output area ...
    ids = {o.transient['display_id'] for o in outs}
    assert len(ids) == 1 and len(outs) == live.n_draws == 6        # ... updated in place at steps 3, 54, 105, 156, 207, 258
    assert all('image/png' in o.data for o in outs) and cap.stdout == ''
    kd = _lines(live.figure.axes[1])['kd [nats/token]']
    assert kd.get_xdata()[-1] == 258                               # the figure shows the history of its last draw
    assert live.figure._suptitle.get_text() == 'training: step 258'
    with capture_output() as cap: live.update(h, force=True)      # the end of training: one more in-place update
    (last,) = cap.outputs
    assert last.update and last.transient['display_id'] in ids
    fresh = LiveLossChart(every=50).draw(h)                         # the final history drawn afresh
    assert np.array_equal(_pixels(last.data['image/png']), _pixels(figure_png(fresh, 80)))

def test_live_chart_outside_ipython_keeps_the_figure(monkeypatch):
    monkeypatch.setattr(InteractiveShell, 'initialized', classmethod(lambda cls: False))
    live = LiveLossChart(every=1)
    assert live.update(_hand_history()) and live.handle is None and len(live.figure.axes) == 2

def test_explorer_controls_redraw():
    cur = Curriculum({'lm': 1.0, 'kd': Linear(0, 1, 0, 0.5), 'feature': Step(0, 0.5, 0.5)})
    h = synthetic_history(100, log_every=5, eval_every=25, curriculum=cur)
    ex = loss_explorer(h)
    assert [c.get_label() for c in ex.figure.axes[0].collections] == ['lm [nats/token]', 'kd [nats/token]', 'feature [nmse]']
    png = ex.image.value
    ex.controls['components'].value = ('feature',)
    ex.controls['view'].value = 'weighted'
    (ax,) = ex.figure.axes
    assert ex.image.value != png and _legend(ax) == ['feature [nmse]', 'total (logged)', 'eval loss (fixed weights)']
    assert _pixels(ex.image.value).shape[1] < _pixels(png).shape[1]   # one panel: a narrower image
    band = ax.collections[0].get_paths()[0].vertices
    r = h[(h.step == 75) & h.loss.notna()].iloc[0]
    assert band[np.isclose(band[:, 0], 75), 1].max() == pytest.approx(r['weighted/feature'])
    assert band[np.isclose(band[:, 0], 25), 1].max() == 0.0       # the step has not switched it on yet
    ex.controls['steps'].value = (50, 80)
    xs = ex.figure.axes[0].get_lines()[0].get_xdata()               # the total line
    assert xs.min() == 50 and xs.max() == 80
    ex.controls['components'].value = ()                            # nothing selected: the last chart stays
    assert len(ex.figure.axes) == 1
    with pytest.raises(ValueError, match='no logged training rows'): loss_explorer(h[h.loss.isna()])

@pytest.mark.slow
def test_real_trainer_history_with_a_curriculum_and_a_live_chart():
    "A Curriculum object drives KDTrainer as is; its history draws, and a LiveLossChart callback follows the run."
    import os, tempfile, datasets, torch
    from kd_toolkit.core import make_config
    from kd_toolkit.testing import tiny_llama
    from kd_toolkit.train import KDTrainer
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ds = datasets.Dataset.from_dict({'input_ids': torch.randint(0, 64, (32, 16), generator=g).tolist()})
    cur = Curriculum({'lm': 1.0, 'kd': Linear(0.0, 1.0, 0.0, 0.5)}, temperature=2.0)
    cfg = make_config('smoke', output_dir=tempfile.mkdtemp(), max_steps=8, logging_steps=1, eval_steps=4)
    tr = KDTrainer(cfg, tiny_llama(vocab_size=64, seed=1), tiny_llama(vocab_size=64, hidden_size=32, num_layers=1), ds, ds.select(range(8)),
                   curriculum=cur)
    live = LiveLossChart(every=2)
    tr.add_callback(live.callback(tr))
    tr.train()
    h = tr.history
    rows = h[h.loss.notna()]
    assert len(rows) == 8
    for _, r in rows.iterrows():   # the weight logged at step s is the curriculum's at the progress of that step's forward
        assert r['weight/kd'] == pytest.approx(cur.weights((r['step'] - 1) / 8)['kd'])
    np.testing.assert_allclose(rows['loss'], rows['weighted/lm'] + rows['weighted/kd'], rtol=1e-5)
    fig = plot_loss_breakdown(h)
    np.testing.assert_allclose(_lines(fig.axes[0])['total (logged)'].get_ydata(), rows['loss'])
    ev = h[h['eval/student_log_ppl'].notna()]
    assert len(ev) == 2                                            # evaluations at steps 4 and 8: lm points on the raw panel
    e = _lines(fig.axes[1])['lm eval [nats/token]']
    assert list(e.get_xdata()) == [4, 8] and np.allclose(e.get_ydata(), ev['eval/student_log_ppl'])
    t = [l for k, l in _lines(fig.axes[1]).items() if k.startswith('teacher CE (eval)')]
    assert len(t) == 1 and t[0].get_ydata()[0] == pytest.approx(ev['eval/teacher_log_ppl'].iloc[-1])   # the teacher's reference
    assert live.n_draws >= 4 and live.last_step == 8

def test_charts_come_from_the_charts_room():
    "Issue 26: viz draws with `charts` (public names), and orders components by the loss registry."
    from kd_toolkit import charts, components, viz
    assert viz.PngFigure is charts.PngFigure and viz.show_png is charts.show_png and viz.image_layout is charts.image_layout
    assert list(viz.UNITS) and set(viz.UNITS) == set(components.COMPONENTS)
    h = synthetic_history(40, log_every=10, eval_every=None, curriculum=Curriculum({'kd': 1.0, 'lm': 1.0}))
    assert history_components(h) == [c for c in components.COMPONENTS if c in ('kd', 'lm')]

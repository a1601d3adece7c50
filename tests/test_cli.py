"""The `kd_toolkit` command as a user meets it: bad input fails fast with a clear message, a non-zero exit code and nothing
presented as a result; a short demo run writes the whole result folder; `evaluate` reports exact bits-per-byte."""
import contextlib, io, math, os, re, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
from kd_toolkit.cli import main
from kd_toolkit.testing import has_asset, require_asset, tiny_llama, STORIES260K, TEXTS

KD = Path(sys.executable).parent/'kd_toolkit'   # the console script installed with the package
STORY = ("Once upon a time there was a little cat who liked to sit in the sun. One day the cat saw a bird in a tall tree. "
         "The bird sang a song, and the cat listened. Then the cat went home to sleep by the warm fire.")

def _run(argv) -> tuple[int, str, str]:
    "Run `main(argv)` in-process; (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main(argv)
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()

def _json(stdout:str) -> dict:
    "The metrics `evaluate --json` printed (its last line)."
    import json
    return json.loads(stdout.strip().splitlines()[-1])

def _table(stdout:str) -> dict:
    "The metrics table `evaluate` and `distill` print: {metric: [model value, teacher value (if any)]}."
    rows = re.findall(r'^(\w+)\s+([-\d.e+]+)(?:\s+([-\d.e+]+))?$', stdout, re.M)
    return {k: [float(v) for v in vs if v] for k, *vs in rows}

def _nothing_presented(out: Path):
    "No result folder and no temporary folder beside it."
    assert not out.exists(), f"{out} was created"
    assert not [p.name for p in out.parent.glob(f'.{out.name}*')], "a temporary folder was left behind"

@pytest.fixture(scope='module')
def tiny_teacher(tmp_path_factory) -> Path:
    "A local model folder with a tokenizer (no download, no shared data): a byte-level BPE and a random 1-layer Llama."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator([STORY] * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=['<s>', '</s>'],
                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token='<s>', eos_token='</s>', pad_token='</s>')
    d = tmp_path_factory.mktemp('teacher')
    tiny_llama(vocab_size=len(tok), hidden_size=32, num_layers=1, seed=1).save_pretrained(d)
    tok.save_pretrained(d)
    return d

def test_console_script_help_and_usage_errors():
    r = subprocess.run([str(KD), '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(c in r.stdout for c in ('demo', 'distill', 'evaluate'))
    r = subprocess.run([str(KD)], capture_output=True, text=True, timeout=120)   # no sub-command
    assert r.returncode != 0 and 'usage' in r.stderr

def test_unknown_teacher_path(tmp_path):
    out = tmp_path/'out'
    t0 = time.time()
    code, stdout, err = _run(['demo', '--teacher', str(tmp_path/'no-such-model'), '--out', str(out)])
    assert code != 0 and 'no-such-model' in err and 'no model there' in err, err
    assert time.time() - t0 < 30 and '[1/5]' not in stdout   # failed before loading anything
    _nothing_presented(out)

def test_bad_steps_fail_before_loading(tmp_path):
    code, stdout, err = _run(['demo', '--steps', '0', '--out', str(tmp_path/'out')])
    assert code != 0 and '--steps 0' in err and '[1/5]' not in stdout, err
    _nothing_presented(tmp_path/'out')

def test_unwritable_output_folder(tmp_path, tiny_teacher):
    "The output's parent is a regular file: no user (root included) can create the folder."
    blocker = tmp_path/'file.txt'; blocker.write_text('x')
    out = blocker/'out'
    code, stdout, err = _run(['demo', '--teacher', str(tiny_teacher), '--out', str(out)])
    assert code != 0 and 'cannot write' in err and str(out) in err, err
    assert '[1/5]' not in stdout   # checked before the teacher is loaded
    assert blocker.read_text() == 'x'

@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0, reason='root can write into read-only folders')
def test_read_only_parent_folder(tmp_path, tiny_teacher):
    parent = tmp_path/'ro'; parent.mkdir(); parent.chmod(0o555)
    try:
        code, stdout, err = _run(['demo', '--teacher', str(tiny_teacher), '--out', str(parent/'out')])
        assert code != 0 and 'cannot write' in err and '[1/5]' not in stdout, err
        assert list(parent.iterdir()) == []
    finally: parent.chmod(0o755)

def test_output_path_is_a_file(tmp_path, tiny_teacher):
    out = tmp_path/'results'; out.write_text('mine')
    code, stdout, err = _run(['demo', '--teacher', str(tiny_teacher), '--out', str(out), '--overwrite'])
    assert code != 0 and str(out) in err and '[1/5]' not in stdout, err   # a message, not a traceback
    assert out.read_text() == 'mine'

def test_existing_output_is_kept_without_overwrite(tmp_path, tiny_teacher):
    out = tmp_path/'out'; out.mkdir(); (out/'mine.txt').write_text('keep')
    code, stdout, err = _run(['demo', '--teacher', str(tiny_teacher), '--out', str(out)])
    assert code != 0 and '--overwrite' in err, err
    assert [p.name for p in out.iterdir()] == ['mine.txt'] and (out/'mine.txt').read_text() == 'keep'

@pytest.mark.parametrize('corpus', ['three short documents', 'one line'])
def test_corpus_too_small_for_one_batch(tmp_path, tiny_teacher, corpus):
    data = tmp_path/'small.txt'
    data.write_text('\n\n'.join(['A cat sat.', 'A dog ran.', 'The sun shone.']) if corpus.startswith('three') else STORY)
    out = tmp_path/'out'
    code, stdout, err = _run(['demo', '--teacher', str(tiny_teacher), '--data', str(data), '--out', str(out)])
    assert code != 0, (stdout, err)
    assert 'too small' in err and '--data' in err, f"not an actionable message: {err!r}"
    _nothing_presented(out)

@pytest.mark.parametrize('steps', [3, 10])   # 3: fewer steps than the preset's logging interval
def test_demo_short_run_writes_a_complete_result(tmp_path, tiny_teacher, steps):
    "A few steps with a local teacher on the built-in corpus: the table, both histories, charts, report and student."
    out = tmp_path/'demo'
    code, stdout, err = _run(['demo', '--teacher', str(tiny_teacher), '--steps', str(steps), '--max-length', '32', '--out', str(out)])
    assert code == 0, err
    assert not list(tmp_path.glob('.demo*')), "temporary folder left after success"
    (tmp_path/'plain').mkdir()
    assert out.stat().st_mode & 0o777 == (tmp_path/'plain').stat().st_mode & 0o777   # not left private like a temp folder
    table = pd.read_csv(out/'results.csv', index_col=0)
    assert {'teacher', 'student_lm_only', 'student_kd'} <= set(table.index)
    ppl, bpb = table['perplexity'], table['bits_per_byte']
    assert all(math.isfinite(v) and v > 1 for v in ppl) and all(math.isfinite(v) and v > 0 for v in bpb)
    # both students and the teacher are scored on the same held-out tokens
    assert table['n_tokens'].nunique() == 1 and table['n_tokens'].iloc[0] > 0
    # a random 300-token model is near uniform: perplexity well under 300 only after training, never above ~2x vocab
    assert ppl.max() < 600
    for name in ('kd', 'lm_only'):
        h = pd.read_csv(out/f'history_{name}.csv')
        assert h['step'].max() == steps and h['loss'].dropna().map(math.isfinite).all()
    assert 'raw/kd' in pd.read_csv(out/'history_kd.csv').columns
    pngs = sorted(out.glob('*.png'))
    assert pngs and all(p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in pngs)
    report = (out/'report.md').read_text()
    assert 'perplexity' in report and all(f'({p.name})' in report for p in pngs)
    # a real markdown table: header, right-aligned number columns, one row per model with the numbers of results.csv
    rows = [l for l in report.splitlines() if l.startswith('|')]
    assert rows[0] == '| model | perplexity | bits_per_byte | n_tokens |' and rows[1] == '| --- | ---: | ---: | ---: |', rows
    kd_row = next(r for r in rows if r.startswith('| student_kd |'))
    assert float(kd_row.split('|')[2]) == pytest.approx(table.loc['student_kd', 'perplexity'], abs=5e-4)
    # one chart compares KD with LM-only on held-out perplexity over steps, the teacher as a line
    assert (out/'heldout_ppl.png').is_file()
    for name in ('kd', 'lm_only'):
        assert pd.read_csv(out/f'history_{name}.csv')['eval/student_ppl'].notna().sum() >= 2   # a curve, not a point
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(out/'student_kd').config.vocab_size >= 300

def test_evaluate_bits_per_byte_counts_every_byte(tmp_path):
    "stories260K on the TinyStories excerpt: perplexity near the 5.7 measured independently, and bpb·ln2·bytes = log(ppl)·tokens."
    model, text = require_asset(STORIES260K), require_asset(TEXTS['tinystories'])
    code, stdout, err = _run(['evaluate', '--model', str(model), '--data', str(text), '--max-length', '256', '--json'])
    assert code == 0, err
    vals = _json(stdout)
    ppl, bpb, n_tok = vals['student_ppl'], vals['student_bpb'], vals['n_tokens']
    assert 4.5 < ppl < 8.0, ppl   # shared/data/README.md: about 5.7 (random init of the same config: about 518)
    n_bytes = math.log(ppl) * n_tok / (math.log(2) * bpb)
    n_file, n_lines = len(text.read_bytes()), text.read_text().count('\n')
    assert n_file - n_lines - 1 <= n_bytes <= n_file + 1, (n_bytes, n_file)   # every byte scored once (newlines may be cut)

def test_evaluate_against_a_teacher_with_another_tokenizer(tiny_teacher):
    "Positions are aligned by text and the teacher's vocabulary mapped (no index errors from mixing vocabularies)."
    model, text = require_asset(STORIES260K), require_asset(TEXTS['tinystories'])
    code, stdout, err = _run(['evaluate', '--model', str(model), '--teacher', str(tiny_teacher), '--data', str(text), '--json'])
    assert code == 0, err
    vals = _json(stdout)
    assert 4.5 < vals['student_ppl'] < 8.0, vals                     # the real model, as without a teacher
    assert abs(vals['teacher_log_ppl'] - math.log(300)) < 0.5, vals   # a random 300-token model is near uniform
    assert vals['n_compared'] > 0.9 * vals['n_tokens'] and vals['kl'] > 0, vals

def test_evaluate_and_distill_bad_input(tmp_path):
    import json
    code, _, err = _run(['evaluate', '--model', str(tmp_path/'nope'), '--data', str(tmp_path/'nope.txt')])
    assert code != 0 and 'nope.txt: no such file' in err, err
    (tmp_path/'some.txt').write_text(STORY)
    code, _, err = _run(['evaluate', '--model', str(tmp_path/'nope'), '--data', str(tmp_path/'some.txt')])
    assert code != 0 and f"--model {tmp_path/'nope'}: no model there" in err, err
    code, _, err = _run(['distill', '--config', str(tmp_path/'missing.json')])
    assert code != 0 and 'no such file' in err, err
    bad = tmp_path/'bad.json'; bad.write_text('{"teacher": ')
    code, _, err = _run(['distill', '--config', str(bad)])
    assert code != 0 and 'not valid JSON' in err, err
    part = tmp_path/'part.json'; part.write_text('{"teacher": "x"}')
    code, _, err = _run(['distill', '--config', str(part)])
    assert code != 0 and "'student'" in err, err
    (tmp_path/'nomodel.json').write_text(json.dumps(dict(teacher=str(tmp_path/'t'), student=str(tmp_path/'s'), train=str(tmp_path/'some.txt'))))
    code, _, err = _run(['distill', '--config', str(tmp_path/'nomodel.json')])
    assert code != 0 and 'nomodel.json: teacher' in err and 'no model there' in err, err

def test_distill_from_config_file(tmp_path):
    "A JSON run spec (real stories260K teacher, a random 1-layer student with its vocabulary): trains, saves, reports."
    import json
    from kd_toolkit.testing import load_tokenizer
    teacher, lines = require_asset(STORIES260K), require_asset(TEXTS['tinystories']).read_text(encoding='utf-8').splitlines()
    student = tmp_path/'student'
    tiny_llama(vocab_size=512, hidden_size=32, num_layers=1).save_pretrained(student)
    load_tokenizer('tok512').save_pretrained(student)
    (tmp_path/'train.txt').write_text('\n\n'.join(lines[2:])); (tmp_path/'eval.txt').write_text('\n\n'.join(lines[:2]))
    spec = dict(teacher=str(teacher), student=str(student), train=str(tmp_path/'train.txt'), eval=str(tmp_path/'eval.txt'),
                preset='smoke', config=dict(output_dir=str(tmp_path/'out'), max_steps=6, max_length=64))
    (tmp_path/'run.json').write_text(json.dumps(spec))
    code, stdout, err = _run(['distill', '--config', str(tmp_path/'run.json')])
    assert code == 0, err
    vals = _table(stdout)   # (a table now: metric, student, teacher)
    # the real teacher (ppl ~6 on TinyStories) against a student 6 steps from random init: near uniform over 512 ids
    assert vals['perplexity'][1] < 20 and abs(vals['log_perplexity'][0] - math.log(512)) < 0.5, vals
    assert 0 <= vals['top1_agreement'][0] <= 1 and vals['kl_teacher_to_model'][0] > 0
    h = pd.read_csv(tmp_path/'out'/'history.csv')
    assert h['step'].max() == 6
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(tmp_path/'out'/'student').config.vocab_size == 512

@pytest.mark.slow
def test_default_demo_kd_beats_lm_only(tmp_path):
    "The embedded default as `make demo` runs it (real SmolLM2-135M teacher, stdlib corpus): KD wins within 10 minutes."
    from kd_toolkit.sources import fetch_smollm2, SourceError
    try: fetch_smollm2()
    except SourceError as e: pytest.skip(f"no SmolLM2 teacher here: {e}")
    t0 = time.time()
    code, stdout, err = _run(['demo', '--out', str(tmp_path/'demo')])
    secs = time.time() - t0
    assert code == 0, err
    t = pd.read_csv(tmp_path/'demo'/'results.csv', index_col=0)
    assert t.loc['student_kd', 'perplexity'] < t.loc['student_lm_only', 'perplexity'], t
    assert t.loc['student_kd', 'bits_per_byte'] < t.loc['student_lm_only', 'bits_per_byte'], t
    assert t.loc['teacher', 'perplexity'] < t.loc['student_kd', 'perplexity'], t
    assert secs < 600, f"the demo took {secs:.0f} s (budget: 10 minutes on 2 cores)"


# --- `distill --config`: every row of issue 17's table that does not need a run, one line each, before any model loads ---

@pytest.fixture
def spec(tmp_path, tiny_teacher):
    "A valid run spec (tiny local teacher and student, text files); tests break one thing each."
    import json
    (tmp_path/'train.txt').write_text('\n\n'.join([STORY] * 6)); (tmp_path/'eval.txt').write_text(STORY)
    d = dict(teacher=str(tiny_teacher), student=str(tiny_teacher), train=str(tmp_path/'train.txt'), eval=str(tmp_path/'eval.txt'),
             preset='smoke', config=dict(output_dir=str(tmp_path/'out'), max_steps=2))
    def write(**changes):
        p = tmp_path/'run.json'; p.write_text(json.dumps({**d, **changes})); return str(p)
    return write

@pytest.fixture
def no_model_loads(monkeypatch):
    "Any model load fails the test: the error must come first."
    import kd_toolkit.cli as cli
    def boom(*a, **k): raise AssertionError("a model was loaded before the input error was found")
    monkeypatch.setattr(cli, 'load_model', boom)

def _one_line_error(code, err, *parts):
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('kd_toolkit distill: error: '), err
    for p in parts: assert p in lines[0], (p, lines[0])

def test_distill_typo_top_level_key(spec, no_model_loads):
    path = spec(evl='x.txt')
    _one_line_error(*_run(['distill', '--config', path])[::2], "unknown key 'evl'", "did you mean 'eval'?")

def test_distill_unknown_preset(spec, no_model_loads):
    _one_line_error(*_run(['distill', '--config', spec(preset='kaggle_p100')])[::2], "unknown preset 'kaggle_p100'", "did you mean 'fp16_16gb'?", 'Presets:')

@pytest.mark.parametrize('which', ['train', 'eval'])
@pytest.mark.parametrize('problem', ['missing', 'binary', 'not utf-8', 'a folder'])
def test_distill_bad_data_file(spec, tmp_path, no_model_loads, which, problem):
    f = tmp_path/f'{which}.data'
    if problem == 'binary': f.write_bytes(b'PK\x03\x04\x00\x00' + bytes(range(256)))
    elif problem == 'not utf-8': f.write_bytes('caf\xe9 cr\xe8me'.encode('latin-1'))
    elif problem == 'a folder': f.mkdir()
    says = {'missing': 'no such file', 'binary': 'binary file', 'not utf-8': 'not UTF-8', 'a folder': 'is a folder'}[problem]
    _one_line_error(*_run(['distill', '--config', spec(**{which: str(f)})])[::2], f'{which} {f}', says)

def test_distill_output_not_writable(spec, tmp_path, no_model_loads):
    blocker = tmp_path/'file.txt'; blocker.write_text('x')   # a folder under a regular file cannot be made (root included)
    path = spec(config=dict(output_dir=str(blocker/'out'), max_steps=2))
    _one_line_error(*_run(['distill', '--config', path])[::2], f'output_dir {blocker/"out"} is not writable')

def test_distill_output_dir_is_a_file(spec, tmp_path, no_model_loads):
    f = tmp_path/'taken'; f.write_text('x')
    _one_line_error(*_run(['distill', '--config', spec(config=dict(output_dir=str(f)))])[::2], f'output_dir {f} is a file')

def test_distill_config_not_an_object(tmp_path, no_model_loads):
    p = tmp_path/'run.json'; p.write_text('["teacher"]')
    _one_line_error(*_run(['distill', '--config', str(p)])[::2], 'expected a JSON object')

def test_evaluate_binary_data_before_loading(tmp_path, tiny_teacher, monkeypatch):
    import kd_toolkit.cli as cli
    monkeypatch.setattr(cli, 'load_model', lambda *a, **k: (_ for _ in ()).throw(AssertionError('loaded')))
    f = tmp_path/'x.bin'; f.write_bytes(bytes(range(256)))
    code, _, err = _run(['evaluate', '--model', str(tiny_teacher), '--data', str(f)])
    assert code == 2 and err.startswith('kd_toolkit evaluate: error: --data') and 'binary file' in err, err


# --- issue 17's table, the rest: wrong knob types, a folder holding a run, damaged checkpoints, resume, evaluate on the student ---

@pytest.mark.parametrize('knob, value, says', [
    ('max_steps', '6', "KDConfig.max_steps='6': expected int, got str (write max_steps=6, without quotes)"),
    ('learning_rate', '1e-3', "KDConfig.learning_rate='1e-3': expected float, got str (write learning_rate=1e-3, without quotes)"),
    ('kd_topk', [16], "KDConfig.kd_topk=[16]: expected int, got list"),
    ('lr', 1e-3, "unknown KDConfig knob(s) 'lr': did you mean 'learning_rate'?"),
    ('divergence', 'kl', "KDConfig.divergence='kl': not one of"),
])
def test_distill_wrong_knob_type_or_value(spec, no_model_loads, knob, value, says):
    "Each refused in one line naming the knob (the config's own check), before any model loads and before the first step."
    path = spec(config={'max_steps': 2, knob: value})
    _one_line_error(*_run(['distill', '--config', path])[::2], f'{path}: ', says)

def _spec_file(folder:Path, teacher:Path, out:Path, **knobs) -> str:
    "A run spec without held-out data (so the final student is the last step's): tiny local models, `knobs` over the smoke preset."
    import json
    (folder/'train.txt').write_text('\n\n'.join([STORY] * 6))
    p = folder/f'run-{len(list(folder.glob("run-*.json")))}.json'
    p.write_text(json.dumps(dict(teacher=str(teacher), student=str(teacher), train=str(folder/'train.txt'), preset='smoke',
                                 config={**dict(output_dir=str(out), max_steps=6, save_steps=2, save_total_limit=2, warmup_steps=0), **knobs})))
    return str(p)

def _weights(folder:Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder/'model.safetensors'))

def _same(a:dict, b:dict) -> bool:
    "Bit for bit."
    import torch
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, tiny_teacher) -> Path:
    "An uninterrupted 6-step run (checkpoints 4 and 6 kept): the reference that resumed runs must match bit for bit."
    d = tmp_path_factory.mktemp('ref')
    code, stdout, err = _run(['distill', '--config', _spec_file(d, tiny_teacher, d/'out')])
    assert code == 0, err
    return d/'out'

def test_distill_prints_where_results_went_and_evaluate_reads_the_student(finished_run, tmp_path, tiny_teacher):
    "The run's last lines name its folder and files; `evaluate --model out/student` works; AutoTokenizer loads the student folder."
    from transformers import AutoTokenizer
    student = finished_run/'student'
    assert sorted(p.name for p in finished_run.iterdir()) == ['checkpoint-4', 'checkpoint-6', 'history.csv', 'student']
    assert (student/'README.md').read_text().startswith('---\nlibrary_name: transformers') and '## Teacher' in (student/'README.md').read_text()
    tok = AutoTokenizer.from_pretrained(student)
    assert tok(STORY)['input_ids'] == AutoTokenizer.from_pretrained(tiny_teacher)(STORY)['input_ids']
    (tmp_path/'held.txt').write_text(STORY)
    code, stdout, err = _run(['evaluate', '--model', str(student), '--data', str(tmp_path/'held.txt'), '--max-length', '32', '--json'])
    assert code == 0, err
    vals = _json(stdout)
    assert math.isfinite(vals['student_ppl']) and 1 < vals['student_ppl'] < len(tok) and vals['n_tokens'] > 0, vals
    # the evaluated model is the trained student, not its starting point: the teacher folder it started from scores differently
    code, stdout0, _ = _run(['evaluate', '--model', str(tiny_teacher), '--data', str(tmp_path/'held.txt'), '--max-length', '32', '--json'])
    vals0 = _json(stdout0)
    assert code == 0 and vals0['n_tokens'] == vals['n_tokens'] and vals0['student_ppl'] != vals['student_ppl'], (vals0, vals)

def test_distill_output_summary(tmp_path, tiny_teacher):
    code, stdout, err = _run(['distill', '--config', _spec_file(tmp_path, tiny_teacher, tmp_path/'out', max_steps=2)])
    assert code == 0, err
    out = (tmp_path/'out').resolve()
    assert f"trained 2 steps (max_steps); results in {out}:" in stdout, stdout
    assert f"kd_toolkit evaluate --model {out/'student'} --data FILE" in stdout and '--resume' in stdout and 'history.csv' in stdout

def test_distill_into_a_folder_holding_a_run(tmp_path, tiny_teacher, monkeypatch):
    "Refused, naming the folder, before any model loads; --overwrite clears the old run (no stale checkpoint); --resume continues it."
    out = tmp_path/'out'
    assert _run(['distill', '--config', _spec_file(tmp_path, tiny_teacher, out)])[0] == 0   # checkpoints 4 and 6
    import kd_toolkit.cli as cli
    load = cli.load_model
    monkeypatch.setattr(cli, 'load_model', lambda *a, **k: (_ for _ in ()).throw(AssertionError('a model was loaded')))
    path = _spec_file(tmp_path, tiny_teacher, out, max_steps=2)
    _one_line_error(*_run(['distill', '--config', path])[::2], f"output_dir {out} already holds a run (checkpoint-4, checkpoint-6, history.csv, student)",
                    '--resume', '--overwrite')
    _one_line_error(*_run(['distill', '--config', path, '--resume', '--overwrite'])[::2], 'exclude each other')
    monkeypatch.setattr(cli, 'load_model', load)
    (out/'notes.txt').write_text('mine')
    code, _, err = _run(['distill', '--config', path, '--overwrite'])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint-2', 'history.csv', 'notes.txt', 'student']   # the old run's 4 and 6 are gone
    code, _, err = _run(['distill', '--config', _spec_file(tmp_path, tiny_teacher, out, max_steps=4), '--resume'])
    assert code == 0, err
    assert pd.read_csv(out/'history.csv')['step'].tolist() == [1, 2, 3, 4]   # steps 1-2 from the first part, 3-4 resumed

@pytest.mark.parametrize('name, cut', [('model.safetensors', 1), ('optimizer.pt', 1), ('trainer_state.json', 0.5)])
def test_damaged_last_checkpoint_falls_back(finished_run, tmp_path, tiny_teacher, name, cut):
    "checkpoint-6 truncated: --resume warns (one line naming it and the file), resumes from checkpoint-4, ends bit-identical."
    import shutil
    out = tmp_path/'out'; shutil.copytree(finished_run, out)
    f = out/'checkpoint-6'/name; n = f.stat().st_size
    f.write_bytes(f.read_bytes()[:n - cut if isinstance(cut, int) else int(n * cut)])
    code, stdout, err = _run(['distill', '--config', _spec_file(tmp_path, tiny_teacher, out), '--resume'])
    assert code == 0, err
    warn = [l for l in err.splitlines() if l.startswith('kd_toolkit distill: warning:')]
    assert len(warn) == 1 and f"checkpoint {out/'checkpoint-6'} is damaged ({name} is truncated" in warn[0] and 'resuming from checkpoint-4' in warn[0], err
    assert _same(_weights(out/'student'), _weights(finished_run/'student'))

def test_no_complete_checkpoint_left(finished_run, tmp_path, tiny_teacher, no_model_loads):
    import shutil
    out = tmp_path/'out'; shutil.copytree(finished_run, out)
    for c in ('checkpoint-4', 'checkpoint-6'): (out/c/'optimizer.pt').write_bytes(b'PK\x03\x04')
    _one_line_error(*_run(['distill', '--config', _spec_file(tmp_path, tiny_teacher, out), '--resume'])[::2],
                    f"no complete checkpoint in {out} to resume from: checkpoint-6: optimizer.pt is truncated", 'checkpoint-4: optimizer.pt')

_KILL = """
import os, signal, sys
import kd_toolkit.train as kt
from kd_toolkit.cli import main
where, step = sys.argv[2], int(sys.argv[3])
orig = getattr(kt.KDTrainer, where)
def die(self, *a, **k):
    if self.state.global_step == step: os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, *a, **k)
setattr(kt.KDTrainer, where, die)
sys.exit(main(['distill', '--config', sys.argv[1]]))
"""

@pytest.mark.parametrize('where, step, last', [('training_step', 4, 'checkpoint-4'),     # killed in step 5, after checkpoint-4
                                               ('_save_rng_state', 4, 'checkpoint-2')])  # killed while saving checkpoint-4
def test_sigkill_then_resume_is_bit_identical(finished_run, tmp_path, tiny_teacher, where, step, last):
    "A real SIGKILL of `kd_toolkit distill` (in a step, or halfway through a save), then `--resume`: the same student, bit for bit."
    import torch
    out, spec = tmp_path/'out', _spec_file(tmp_path, tiny_teacher, tmp_path/'out')
    env = {**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads())}   # the reference ran with this process's threads
    r = subprocess.run([sys.executable, '-c', _KILL, spec, where, str(step)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])
    assert sorted(p.name for p in out.glob('checkpoint-*'))[-1] == last and not (out/'student').exists()
    code, stdout, err = _run(['distill', '--config', spec, '--resume'])
    assert code == 0, err
    assert _same(_weights(out/'student'), _weights(finished_run/'student'))
    assert pd.read_csv(out/'history.csv')['step'].tolist() == pd.read_csv(finished_run/'history.csv')['step'].tolist()

# ---------------------------------------------------------------- issue 26: one tiny-model builder, the old name, light import
def _psum(m) -> float: return sum(float(p.detach().double().sum()) for p in m.parameters())

def test_demo_student_weights_unchanged():
    "The demo's student is `assets.tiny_llama` now; its weights are those it had before (sums measured at 3968f4b)."
    from kd_toolkit.cli import demo_student
    a = demo_student(300, hidden_size=32, seed=3)
    assert abs(_psum(a) - 167.939467) < 1e-4 and abs(_psum(demo_student(400, seed=0)) - 644.595764) < 1e-4
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()   # tied
    assert (a.config.max_position_embeddings, a.config._attn_implementation) == (1024, 'sdpa')

def test_tiny_models_unchanged():
    "testing.tiny_llama and the 'tiny' model spec give the weights they gave before the builder moved to `assets`."
    from kd_toolkit import assets, testing
    from kd_toolkit.sources import load_model
    assert testing.tiny_llama is assets.tiny_llama
    assert abs(_psum(tiny_llama()) - 311.576752) < 1e-4
    assert abs(_psum(tiny_llama(300, 32, num_layers=1, seed=3)) - 102.703565) < 1e-4
    m, tok = load_model('tiny', texts=['hello world'] * 3, seed=2)
    assert len(tok) == 267 and abs(_psum(m) - 326.06863) < 1e-4

def test_load_teacher_is_a_deprecated_alias(tiny_teacher):
    "`cli.load_teacher` (kept one release) warns and returns what `sources.load_model` returns."
    import kd_toolkit.cli as cli
    from kd_toolkit.sources import load_model
    with pytest.warns(DeprecationWarning, match='kd_toolkit.sources.load_model'):
        m, tok = cli.load_teacher(str(tiny_teacher))
    m2, tok2 = load_model(str(tiny_teacher))
    assert len(tok) == len(tok2) and all(a.equal(b) for a, b in zip(m.parameters(), m2.parameters()))

def test_cli_imports_light():
    "`import kd_toolkit.cli` (the console script's first step) loads no training room and no transformers."
    code = ("import sys, kd_toolkit.cli; "
            "print(sorted(m for m in ('transformers', 'pandas', 'kd_toolkit.data', 'kd_toolkit.train', "
            "'kd_toolkit.recipe', 'kd_toolkit.testing') if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == '[]', (r.stdout, r.stderr[-2000:])

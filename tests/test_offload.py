"""Issue 27: a teacher bigger than the GPU. A teacher dispatched by accelerate (every weight on disk, or split CPU +
disk) through every teacher pass; the cache's fingerprint (refusals, the old cache accepted with a warning); the disk
estimate before a build; a resume that names what changed. CPU, tiny models, a few seconds each."""
import json, shutil, warnings
from unittest import mock
import numpy as np, pytest, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from kd_toolkit.cache import TeacherCache, build_teacher_cache
from kd_toolkit.core import input_device, is_dispatched, make_config, module_device
from kd_toolkit.data import KDCollator
from kd_toolkit.evaluate import Evaluator
from kd_toolkit.testing import tiny_llama
from kd_toolkit.train import distill

V = 64

def _ds(n=12, L=16, seed=0, lens=None):
    "Random token rows: all of length L (packed windows) unless `lens` cycles other lengths."
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, V, ((lens[i % len(lens)] if lens else L),), generator=g).tolist() for i in range(n)]
    return Dataset.from_dict({'input_ids': rows})

@pytest.fixture(scope='module')
def teachers(tmp_path_factory):
    "The same tiny teacher in memory, with every weight on disk, and split CPU + disk."
    d = tmp_path_factory.mktemp('teacher')
    tiny_llama(vocab_size=V, num_layers=3, seed=1).save_pretrained(d/'t')
    load = lambda **kw: AutoModelForCausalLM.from_pretrained(d/'t', attn_implementation='eager', **kw)
    disk = dict(device_map='auto', max_memory={'cpu': '1KB'}, offload_folder=str(d/'off1'))
    split = dict(device_map='auto', max_memory={'cpu': '400KB'}, offload_folder=str(d/'off2'))
    return {'memory': load(), 'disk': load(**disk), 'cpu+disk': load(**split)}

def _student(): return tiny_llama(vocab_size=V, hidden_size=32, num_layers=1, seed=0)

@pytest.mark.parametrize('where', ['disk', 'cpu+disk'])
def test_offloaded_cache_equals_in_memory(teachers, tmp_path, where):
    "The offloaded teacher's cache: ids equal, fp16 log-probs within one fp16 step (here: equal), tails close."
    t = teachers[where]
    assert is_dispatched(t) and input_device(t).type == 'cpu' and 'disk' in set(t.hf_device_map.values())
    assert set(t.hf_device_map.values()) == ({'disk'} if where == 'disk' else {'cpu', 'disk'})
    assert any(p.device.type == 'meta' for p in t.parameters())
    ds = _ds(lens=[16, 9, 16, 5])
    a = build_teacher_cache(teachers['memory'], ds, tmp_path/'mem', k=8, batch_size=4).arrays['topk']
    b = build_teacher_cache(t, ds, tmp_path/'off', k=8, batch_size=4).arrays['topk']
    assert np.array_equal(a['ids'], b['ids'])
    ulp = np.spacing(np.abs(a['logprobs']).astype(np.float16)).astype(np.float32)
    assert (np.abs(a['logprobs'].astype(np.float32) - b['logprobs'].astype(np.float32)) <= ulp).all()
    np.testing.assert_allclose(a['tail'], b['tail'], atol=1e-5)

def test_offloaded_teacher_live_training_and_evaluator(teachers, tmp_path):
    "The live (uncached) trainer and the evaluator with the disk-offloaded teacher: the in-memory teacher's numbers."
    ds, ev = _ds(), _ds(n=4, seed=9)
    runs = {w: distill(make_config('smoke', output_dir=str(tmp_path/w), max_steps=3, eval_steps=3, kd_topk=8, seed=0),
                       teachers[w], _student(), ds, ev) for w in ('memory', 'disk')}
    h = {w: r.history for w, r in runs.items()}
    np.testing.assert_allclose(h['disk']['loss'].dropna(), h['memory']['loss'].dropna(), rtol=1e-5)
    np.testing.assert_allclose(runs['disk'].eval['teacher_ppl'], runs['memory'].eval['teacher_ppl'], rtol=1e-5)
    assert runs['disk'].trainer.teacher is teachers['disk'] and module_device(teachers['disk']).type == 'meta'   # not moved
    b = [KDCollator(pad_id=0)([ev[i] for i in range(4)])]
    e1, e2 = (Evaluator(_student(), teachers[w]).evaluate(b) for w in ('memory', 'disk'))
    for k in ('teacher_ppl', 'kl', 'top1_agree', 'topk_agree'): assert e1[k] == pytest.approx(e2[k], rel=1e-5), k

def test_student_trains_from_the_offloaded_teachers_cache(teachers, tmp_path):
    "The documented path: build the cache with the offloaded teacher in large batches, then train with no teacher."
    ds = _ds(n=16)
    build_teacher_cache(teachers['disk'], ds, tmp_path/'c', k=8, batch_tokens=64)
    r = distill(make_config('smoke', output_dir=str(tmp_path/'o'), max_steps=3, eval_steps=0, kd_topk=8,
                            teacher_cache=str(tmp_path/'c')), None, _student(), ds)
    assert r.stop_reason == 'max_steps' and r.history['raw/kd'].notna().any()
    assert 'from the teacher cache' in (tmp_path/'o'/'student'/'README.md').read_text()

def test_dispatched_teacher_is_never_moved_or_cast(teachers, tmp_path):
    "teacher_dtype would cast it, init_from_teacher would copy it: refused in one line each."
    cfg = dict(output_dir=str(tmp_path/'o'), max_steps=1, eval_steps=0, kd_topk=8)
    for kw, says in ((dict(teacher_dtype='bf16'), "teacher_dtype='bf16' would cast a teacher dispatched by accelerate"),
                     (dict(init_from_teacher=True), 'init_from_teacher=True copies the teacher')):
        with pytest.raises(ValueError, match=says) as e:
            distill(make_config('smoke', **cfg, **kw), teachers['disk'], tiny_llama(vocab_size=V, num_layers=1, seed=0), _ds())
        assert len(str(e.value).splitlines()) == 1

def test_fingerprint_of_an_offloaded_tied_teacher_is_stable(tmp_path):
    "accelerate's hooks untie a tied head during a pass; the fingerprint (and a cache's check) does not change."
    from kd_toolkit.cache import teacher_fingerprint
    t = tiny_llama(vocab_size=V, num_layers=2, seed=1, tie=True); t.save_pretrained(tmp_path/'t')
    off = AutoModelForCausalLM.from_pretrained(tmp_path/'t', device_map='auto', max_memory={'cpu': '1KB'},
                                               offload_folder=str(tmp_path/'off'))
    before = teacher_fingerprint(off)
    c = build_teacher_cache(off, _ds(), tmp_path/'c', k=4)                     # passes: the hooks run
    assert teacher_fingerprint(off) == before and before['weights'] == teacher_fingerprint(t)['weights']
    c.check(_ds(), ['topk'], 1.0, False, teacher=off, k=4)

def _refusal(cache_dir, teacher, ds, out):
    "The one-line error a run with `teacher` on `ds` gets from the cache at `cache_dir` (None: accepted)."
    cfg = make_config('smoke', output_dir=str(out), max_steps=1, eval_steps=0, kd_topk=8, teacher_cache=str(cache_dir))
    try: distill(cfg, teacher, _student(), ds); return None
    except ValueError as e:
        assert len(str(e).splitlines()) == 1; return str(e)

def test_cache_refuses_other_text_and_another_teacher(teachers, tmp_path):
    "Other text of the same shape, another teacher: refused, naming what differs; the same data and teacher: accepted."
    ds, t = _ds(), teachers['memory']
    build_teacher_cache(t, ds, tmp_path/'c', k=8)
    assert _refusal(tmp_path/'c', t, ds, tmp_path/'a') is None
    assert _refusal(tmp_path/'c', None, ds, tmp_path/'b') is None                    # no teacher: the text is checked
    msg = _refusal(tmp_path/'c', None, _ds(seed=5), tmp_path/'d')                   # packed: the same shape
    assert 'was built from something else: other input_ids (the same lengths, other tokens)' in msg
    msg = _refusal(tmp_path/'c', tiny_llama(vocab_size=V, num_layers=3, seed=2), ds, tmp_path/'e')
    assert 'another teacher (other weights' in msg
    msg = _refusal(tmp_path/'c', tiny_llama(vocab_size=V, num_layers=2, seed=1), ds, tmp_path/'f')
    assert 'another teacher (its config differs)' in msg

def test_cache_without_fingerprint_is_accepted_with_one_warning(teachers, tmp_path):
    "A cache built before fingerprints: read as before, with one warning that it cannot be checked."
    ds = _ds()
    c = build_teacher_cache(teachers['memory'], ds, tmp_path/'c', k=8)
    meta = json.loads((c.path/'meta.json').read_text()); del meta['fingerprint']
    (c.path/'meta.json').write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert _refusal(tmp_path/'c', None, ds, tmp_path/'o') is None
    assert len([x for x in w if 'has no fingerprint' in str(x.message)]) == 1

def test_cache_build_that_would_not_fit_the_disk(teachers, tmp_path):
    "Refused before the teacher runs, with the size estimate and the free space; nothing left behind."
    calls = []
    t = teachers['memory']
    hook = t.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with mock.patch('shutil.disk_usage', return_value=mock.Mock(free=2_000)):
            with pytest.raises(OSError, match=r'^the teacher cache needs about 397\.\d kB at .*, the disk has 2\.0 kB free: '):
                build_teacher_cache(t, _ds(n=64), tmp_path/'c', k=64)
    finally: hook.remove()
    assert calls == [] and not (tmp_path/'c').exists() and not (tmp_path/'c.tmp').exists()

def test_resume_with_other_data_or_knobs_warns(tmp_path):
    "A resume with other training data and another learning rate warns, naming both; the same run resumed says nothing."
    cfg = make_config('smoke', output_dir=str(tmp_path/'o'), max_steps=2, eval_steps=0, save_steps=2, kd_topk=8)
    teacher, ds = tiny_llama(vocab_size=V, num_layers=2, seed=1), _ds()
    distill(cfg, teacher, _student(), ds)
    def resumed(c, d):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            distill(c, teacher, _student(), d, resume=True)
        return [str(x.message) for x in w if 'resuming from' in str(x.message)]
    assert resumed(cfg, ds) == []                                                  # the same run: nothing to say
    (msg,) = resumed(cfg.replace(max_steps=4, save_steps=4, learning_rate=0.02), _ds(seed=5))
    assert msg.startswith('resuming from checkpoint-') and 'written by a run with other inputs: ' in msg and len(msg.splitlines()) == 1
    for part in ('other input_ids (the same lengths, other tokens)', 'max_steps 2 -> 4', 'learning_rate 0.001 -> 0.02'):
        assert part in msg, msg

def test_readme_big_teacher_block_runs(tmp_path):
    "README's 'A teacher bigger than the GPU' block runs as written, with local models and every weight on disk."
    import gc, re
    from pathlib import Path
    from kd_toolkit.cache import build_teacher_cache as btc
    from kd_toolkit.data import build_kd_dataset
    from kd_toolkit.testing import load_tokenizer, read_text
    text = (Path(__file__).resolve().parents[1]/'README.md').read_text(encoding='utf-8')
    code = re.search(r"```python\n(.*?)```", text.split('### A teacher bigger than the GPU', 1)[1], re.S).group(1)
    mem = 'max_memory={0: "10GiB", "cpu": "24GiB"}'
    assert mem in code, "the README's block changed: update this test's substitution"
    code = code.replace(mem, 'max_memory={"cpu": "1KB"}').replace('offload_folder="offload"', f'offload_folder={str(tmp_path/"off")!r}')
    tiny_llama(vocab_size=512, num_layers=2, seed=1).save_pretrained(tmp_path/'big')
    texts = [t for t in read_text('tinystories').split('\n') if t.strip()][:40]
    ns = dict(AutoModelForCausalLM=AutoModelForCausalLM, BIG=str(tmp_path/'big'), tok=load_tokenizer('tok512'), texts=texts,
              build_kd_dataset=build_kd_dataset, build_teacher_cache=btc, gc=gc, torch=torch, distill=distill,
              make_config=make_config, PRESET='smoke', OUT=str(tmp_path/'out'), student=_student_512())
    import os; cwd = os.getcwd(); os.chdir(tmp_path)
    try: exec(compile(code, 'README.md', 'exec'), ns)
    finally: os.chdir(cwd)
    assert ns['result'].stop_reason == 'max_steps' and 'teacher' not in ns and (tmp_path/'kd_cache'/'meta.json').exists()

def _student_512(): return tiny_llama(vocab_size=512, hidden_size=32, num_layers=1, seed=0)

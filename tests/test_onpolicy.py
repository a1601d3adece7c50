"""On-policy and sequence-level distillation (issue 24): lmbda=0 is today's run bit for bit, prompt data, sampled
micro-batches in the trainer (lmbda, seq_kd, the kd_policy component), the teacher cache rule, cross-tokenizer."""
import math, os, tempfile
os.environ.setdefault('OMP_NUM_THREADS', '1')
import datasets, pytest, torch
from kd_toolkit.core import ConfigError, KDConfig, make_config
from kd_toolkit.curriculum import Step
from kd_toolkit.components import MicroBatch, Plan
from kd_toolkit.data import KDCollator, build_prompt_dataset, pad_id
from kd_toolkit.onpolicy import Sampler, generation_config, prompts_of
from kd_toolkit.testing import has_asset, load_stories260k, load_tokenizer, read_text, tiny_gpt2, tiny_llama
from kd_toolkit.train import KDTrainer, distill

torch.set_num_threads(1)
needs_tok512 = pytest.mark.skipif(not has_asset('tokenizers/tok512'), reason='tok512 tokenizer asset missing')

def _ids(n=16, L=16, V=64):
    g = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_dict({'input_ids': torch.randint(0, V, (n, L), generator=g).tolist()})

def _run(ds=None, teacher=None, student=None, curriculum=None, **kw):
    cfg = make_config('smoke', output_dir=tempfile.mkdtemp(), max_steps=4, logging_steps=1, eval_steps=0, **kw)
    tr = KDTrainer(cfg, teacher or tiny_llama(vocab_size=64, seed=1),
                   student or tiny_llama(vocab_size=64, hidden_size=32, num_layers=1, seed=2), ds if ds is not None else _ids(),
                   curriculum=curriculum or {'lm': 0.25, 'kd': 0.75})
    tr.train()
    return tr

def test_lmbda0_is_todays_run_bit_for_bit():
    a = _run()
    b = _run(lmbda=0.0, beta=0.5, max_new_tokens=8, sampling_temperature=0.7, max_prompt_length=8)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ha, hb = (t.history.drop(columns=['tokens_per_s']) for t in (a, b))   # (tokens_per_s: wall-clock)
    assert list(ha.columns) == list(hb.columns) and ha.equals(hb)
    assert not [c for c in hb if '@' in c or c in ('gen_share', 'policy_share')]   # no new columns
    assert a.sampler is None and b.sampler is None and b.coin.rng.getstate() == type(b.coin)(0.0, b.args.seed).rng.getstate()

def test_beta_reaches_jsd():
    a, b = _run(divergence='jsd'), _run(divergence='jsd', beta=0.5)
    assert a.history.drop(columns=['tokens_per_s']).equals(b.history.drop(columns=['tokens_per_s']))
    c = _run(divergence='jsd', beta=1.0)
    assert not math.isclose(a.history['raw/kd'].iloc[0], c.history['raw/kd'].iloc[0], rel_tol=1e-6)

def test_knob_checks():
    for kw, said in [(dict(lmbda=-0.1), 'KDConfig.lmbda=-0.1'), (dict(beta=2), 'KDConfig.beta=2'),
                     (dict(max_new_tokens=0), 'KDConfig.max_new_tokens=0'), (dict(seq_kd=True, max_length=64), '> max_length=64'),
                     (dict(curriculum={'kd': 1, 'kd_policy': 1}, max_length=200), 'lower one or raise max_length')]:
        with pytest.raises(ConfigError, match=said.replace('.', r'\.')): KDConfig(**kw)

# ------------------------------------------------------------------------------------------------ prompt data
def _prompts(n=12):
    text = read_text('tinystories', 20_000)
    sents = [s.strip() + '.' for s in text.replace('\n', ' ').split('.') if len(s.split()) > 6][:n]
    return datasets.Dataset.from_dict({'prompt': [' '.join(s.split()[:4]) for s in sents],
                                       'completion': [' ' + ' '.join(s.split()[4:]) for s in sents]})

@needs_tok512
def test_prompt_tokens_are_never_targets():
    tok = load_tokenizer('tok512')
    ds = build_prompt_dataset(_prompts(), tok, max_length=48, max_prompt_length=6)
    b = KDCollator(pad_id(tok))([ds[i] for i in range(4)])
    for i, pl in enumerate(ds['prompt_len'][:4]):
        assert (b['labels'][i, :pl] == -100).all() and (b['labels'][i, pl:][b['attention_mask'][i, pl:] == 1] != -100).all()
    s = MicroBatch(b, Plan())
    km = s.kmask
    for i, pl in enumerate(ds['prompt_len'][:4]): assert not km[i, :pl - 1].any() and km[i, pl - 1]   # KD from the last prompt token
    assert (km.sum(1) == (s.targets != -100).sum(1)).all()   # KD and LM score the same completion positions
    assert all(pl <= 6 + 1 for pl in ds['prompt_len'])       # the prompt's last 6 tokens (+ BOS)

@needs_tok512
def test_chat_messages_with_the_students_template():
    if not has_asset('tokenizers/smollm2'): pytest.skip('smollm2 tokenizer asset missing')
    tok = load_tokenizer('smollm2')
    ds = datasets.Dataset.from_dict({'messages': [[{'role': 'user', 'content': 'Tell me a story.'},
                                                   {'role': 'assistant', 'content': 'Once upon a time.'}]]})
    row = build_prompt_dataset(ds, tok, max_length=128)[0]
    assert tok.decode(row['input_ids'][row['prompt_len']:]).startswith('Once upon a time.')
    assert tok.decode(row['input_ids'][:row['prompt_len']]).rstrip().endswith('assistant')

# ------------------------------------------------------------------------------------------------ the trainer
def _tok512_run(**kw):
    tok = load_tokenizer('tok512')
    ds = build_prompt_dataset(_prompts(16), tok, max_length=40, max_prompt_length=8)
    cfg = make_config('smoke', output_dir=tempfile.mkdtemp(), max_steps=kw.pop('steps', 4), logging_steps=1, eval_steps=0,
                      max_length=40, max_prompt_length=8, max_new_tokens=12, **kw.pop('cfg', {}))
    tr = KDTrainer(cfg, kw.pop('teacher', None) or tiny_llama(vocab_size=512, seed=1),
                   tiny_llama(vocab_size=512, hidden_size=32, num_layers=1, seed=2), ds, processing_class=tok, **kw)
    tr.train()
    return tr

@needs_tok512
def test_lmbda_samples_share_of_micro_batches():
    tr = _tok512_run(cfg=dict(lmbda=0.5, seed=3), steps=8, curriculum={'kd': 0.75, 'lm': 0.25})
    h = tr.history
    assert {'gen_share', 'policy_share', 'raw/kd@policy', 'raw/kd@data'} <= set(h.columns)
    assert 0 < h['policy_share'].mean() < 1 and (h['gen_share'] > 0).any()
    on = h['policy_share'] == 1
    assert h.loc[on, 'raw/lm'].isna().all() and h.loc[on, 'raw/kd@policy'].notna().all()   # no LM on own samples
    assert tr.sampler.tokens > 0
    from kd_toolkit.viz import plot_loss_breakdown, history_components
    assert 'kd@policy' not in history_components(h)                    # a kind is not a component...
    raw_ax = plot_loss_breakdown(h).axes[1]
    assert ('kd on policy samples', '--') in [(l.get_label(), l.get_linestyle()) for l in raw_ax.get_lines()]  # ...but a line

@needs_tok512
def test_kd_policy_component_with_warmup():
    tr = _tok512_run(cfg=dict(policy_divergence='rkl'), steps=6,
                     curriculum={'kd': 0.75, 'lm': 0.25, 'kd_policy': Step(0.0, 0.5, at=0.5)})
    h = tr.history
    early, late = h[h['progress'] <= 0.5], h[h['progress'] > 0.5]
    assert early['raw/kd_policy'].isna().all() and late['raw/kd_policy'].notna().all()
    assert (early['gen_share'] == 0).all() and (late['gen_share'] > 0).all()
    assert 'policy_share' not in h   # no coin: lmbda = 0
    assert math.isclose(h['loss'].iloc[-1], sum(h[c].iloc[-1] for c in h if c.startswith('weighted/')), rel_tol=1e-5)

@needs_tok512
def test_seq_kd_trains_on_teacher_samples():
    tr = _tok512_run(cfg=dict(seq_kd=True), steps=3)
    h = tr.history
    assert (h['policy_share'] == 0).all() and h['raw/kd@teacher'].notna().all() and h['raw/lm'].notna().all()

def test_sampled_batch_is_right_padded_with_completion_mask():
    tok = type('T', (), dict(eos_token_id=2, pad_token_id=0, added_tokens_decoder={}))()
    s = Sampler(tok, max_new_tokens=4)
    b = s.sampled_batch([[1, 5, 6], [1, 9]], [[7, 2], [8, 8, 8, 8]])
    assert b['attention_mask'].tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]
    assert b['completion_mask'].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert prompts_of(b) == [[1, 5, 6], [1, 9]]

def test_generation_config_ignores_checkpoint_defaults():
    m = tiny_llama(vocab_size=64)
    m.generation_config.top_k, m.generation_config.top_p, m.generation_config.repetition_penalty = 20, 0.8, 1.05
    g = m._prepare_generation_config(generation_config(8, 0.9, [2], 0))[0]
    assert (g.top_k, g.top_p, g.repetition_penalty, g.temperature, g.do_sample) == (0, 1.0, 1.0, 0.9, True)

# ------------------------------------------------------------------------------------------------ the teacher cache
@needs_tok512
def test_cache_without_teacher_is_refused_in_one_line():
    tok = load_tokenizer('tok512')
    ds = build_prompt_dataset(_prompts(8), tok, max_length=40, max_prompt_length=8)
    cfg = make_config('smoke', output_dir=tempfile.mkdtemp(), teacher_cache=tempfile.mkdtemp(), kd_topk=8, lmbda=0.5,
                      max_length=40, max_prompt_length=8, max_new_tokens=12)
    with pytest.raises(ValueError, match='pass the teacher too') as e:
        KDTrainer(cfg, None, tiny_llama(vocab_size=512, hidden_size=32, num_layers=1), ds, processing_class=tok)
    assert '\n' not in str(e.value)

@needs_tok512
def test_cache_serves_the_teacher_forced_share():
    teacher, calls = tiny_llama(vocab_size=512, seed=1), []
    tr = _tok512_run(cfg=dict(lmbda=0.5, seed=3, teacher_cache=os.path.join(tempfile.mkdtemp(), 'c'), kd_topk=8), steps=8,
                     teacher=teacher, curriculum={'kd': 1.0})
    assert tr.kd_path == 'cached'
    h = tr.history
    on = h['policy_share'] == 1
    assert on.any() and (~on).any() and h['raw/kd'].notna().all()

# ------------------------------------------------------------------------------------------------ across tokenizers
@pytest.mark.skipif(not (has_asset('models/stories260K') and has_asset('tokenizers/gpt2')), reason='assets missing')
def test_cross_tokenizer_onpolicy_end_to_end():
    stok, ttok = load_tokenizer('gpt2'), load_tokenizer('tok512')
    student = tiny_gpt2(vocab_size=len(stok), hidden_size=32, num_layers=1, seed=2)
    cfg = make_config('smoke', output_dir=tempfile.mkdtemp(), max_steps=3, logging_steps=1, eval_steps=0, cross_tokenizer=True,
                      kd_topk=16, max_length=48, max_prompt_length=8, max_new_tokens=12, lmbda=1.0)
    r = distill(cfg, load_stories260k(), student, _prompts(8), student_tokenizer=stok, teacher_tokenizer=ttok,
                curriculum={'kd': 1.0})
    h = r.history
    assert (h['policy_share'] == 1).all() and h['raw/kd@policy'].notna().all() and (h['raw/kd'] > 0).all()
    assert r.trainer.sampler.ttok is ttok and r.trainer.kd_path_label.endswith('+trie')   # the default objective

# ------------------------------------------------------------------------------------------------ fp16 on sampled batches
def test_fp16_grads_equal_fp32_on_a_sampled_micro_batch():
    "The losses of sampled micro-batches (rKL, generalized JSD, chunked) keep fp16/bf16 gradients equal to fp32's under any loss scale."
    from kd_toolkit.losses import kd_loss
    from kd_toolkit.testing import fp16_grad_check
    tok = type('T', (), dict(eos_token_id=2, pad_token_id=0, added_tokens_decoder={}))()
    student, teacher = tiny_llama(vocab_size=64, seed=2), tiny_llama(vocab_size=64, num_layers=3, seed=1)
    torch.manual_seed(0)
    sm = Sampler(tok, max_new_tokens=12)
    b = sm(student, KDCollator(0)([{'input_ids': [1, 5, 6, 7], 'prompt_len': 4}, {'input_ids': [1, 9], 'prompt_len': 2}]))
    M = MicroBatch(b, Plan()).kmask
    assert M.any() and not M[:, 0].any()                                             # only completion positions
    with torch.no_grad():
        S = student(b['input_ids'], attention_mask=b['attention_mask']).logits * 4   # sharper, as trained students are
        T = teacher(b['input_ids'], attention_mask=b['attention_mask']).logits * 4
    for div, kw in (('rkl', {}), ('jsd', dict(beta=0.9)), ('rkl', dict(chunk_size=7))):
        df = fp16_grad_check(lambda s, t: kd_loss(s, t, M, div, **kw), dict(s=S, t=T), ['s'])
        assert df['ok'].all(), (div, kw, df)

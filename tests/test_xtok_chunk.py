"""cross_vocab_loss='chunk' in a run (issue 16): the teacher-cache field 'token_logprobs' round-trips, and a tiny
cross-tokenizer `distill` trains on chunk likelihoods live and from the cache (real GPT-2 and tok512 tokenizers, tiny models)."""
import copy, math
import pytest, torch
from kd_toolkit.testing import load_tokenizer, read_text, require_asset, tiny_llama

@pytest.fixture(scope='module')
def pair():
    require_asset('tokenizers/gpt2'); require_asset('models/stories260K')
    return load_tokenizer('gpt2'), load_tokenizer('tok512')   # student, teacher

@pytest.fixture(scope='module')
def ds(pair):
    from kd_toolkit.data import build_kd_dataset
    texts = [l for l in read_text('tinystories', 6000).splitlines() if len(l) > 40][:8]
    return build_kd_dataset(texts, *pair, max_length=48)

def _teacher(tok): return tiny_llama(vocab_size=len(tok), hidden_size=32, num_layers=1, seed=1)

def test_token_logprobs_field_round_trip(pair, ds, tmp_path):
    """Cached rows = the live field, bit for bit (fp32 on disk); one row per real teacher token; each row the teacher's
    float64 log-softmax at its next token, 0 at an example's last token."""
    from kd_toolkit.cache import FIELDS, build_teacher_cache, teacher_fields, teacher_forward
    from kd_toolkit.data import KDCollator
    s_tok, t_tok = pair
    teacher = _teacher(t_tok).eval()
    assert FIELDS['token_logprobs'].rows == 'teacher'
    collate = KDCollator(pad_id=0, teacher_pad_id=0)
    cache = build_teacher_cache(teacher, ds, tmp_path/'c', k=4, batch_size=3, data_collator=collate, fields=('token_logprobs',))
    assert cache.offsets['teacher'][-1] == sum(len(x) for x in ds['teacher_input_ids'])
    idx = [5, 0, 2]
    b = collate([ds[i] for i in idx])
    with torch.no_grad(): live = teacher_fields(teacher_forward(teacher, b), b, ['token_logprobs'])['token_logprobs']
    got = cache.read('token_logprobs', idx)
    assert got.dtype == torch.float32 and torch.equal(got, live)
    ref = []
    for i in idx:
        t = torch.tensor(ds[i]['teacher_input_ids'])
        with torch.no_grad(): lp = teacher(t[None]).logits[0].double().log_softmax(-1)
        ref += lp[:-1].gather(1, t[1:, None])[:, 0].tolist() + [0.0]
    torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5, rtol=0)
    cache.check(ds, ['token_logprobs'], 1.0, student_ids=False)

def test_distill_chunk_live_equals_cached(pair, ds, tmp_path):
    """Three steps of cross_vocab_loss='chunk': finite KD terms >= 0 (a mean of binary KLs), the student moves, and the
    run from the teacher cache (teacher field 'token_logprobs') gives the same losses as the live teacher, also with no
    teacher model at all."""
    from kd_toolkit.core import make_config
    from kd_toolkit.train import distill
    s_tok, t_tok = pair
    teacher, student = _teacher(t_tok), tiny_llama(vocab_size=len(s_tok), hidden_size=32, num_layers=1)
    s0 = copy.deepcopy(student)
    kw = dict(max_steps=3, warmup_steps=0, cross_tokenizer=True, cross_vocab_loss='chunk', kd_topk=4, eval_steps=0)
    live = distill(make_config('smoke', output_dir=str(tmp_path/'live'), **kw), teacher, student, ds, None, s_tok, t_tok).history
    assert set(live['kd_path']) == {'topk+chunk'} and len(live) == 3
    assert all(math.isfinite(x) and x > 0 for x in live['raw/kd']) and all(math.isfinite(x) for x in live['raw/lm'])
    assert (live['weight/kd'] > 0).all()   # the chunk term is in the loss, not only logged
    assert any(not torch.equal(a, b) for a, b in zip(s0.parameters(), student.parameters()))
    cfg = make_config('smoke', output_dir=str(tmp_path/'cached'), teacher_cache=str(tmp_path/'cache'), **kw)
    cached = distill(cfg, teacher, copy.deepcopy(s0), ds, None, s_tok, t_tok).history
    assert set(cached['kd_path']) == {'cached+chunk'}
    assert sorted((tmp_path/'cache').glob('token_logprobs.*.npy'))   # the cache holds the field the objective reads
    torch.testing.assert_close(torch.tensor(cached['raw/kd'].values), torch.tensor(live['raw/kd'].values), rtol=1e-5, atol=1e-7)
    cfg = make_config('smoke', output_dir=str(tmp_path/'noteacher'), teacher_cache=str(tmp_path/'cache'), **kw)
    alone = distill(cfg, None, copy.deepcopy(s0), ds, None, s_tok, t_tok).history
    torch.testing.assert_close(torch.tensor(alone['raw/kd'].values), torch.tensor(live['raw/kd'].values), rtol=1e-5, atol=1e-7)

"""The default cross pair's architecture (Qwen2.5-0.5B -> SmolLM2-135M) in miniature: a tiny Qwen2-config teacher with the
Qwen embedding size and the real Qwen2.5 tokenizer, into a tiny student with the real SmolLM2 tokenizer, through the
alignment, fp16 emulation (fp16 teacher on CPU, fp16 logits) and one training step.

Vocabulary sizes, checked here: the tokenizer has 151,643 BPE tokens + 22 special = 151,665 (`len(tok)`); the models'
embeddings are padded to 151,936 rows (Qwen2.5-0.5B/1.5B/3B) or 152,064 (7B and up). Rows past 151,665 carry no token."""
import math, tempfile
import pytest
import torch
from kd_toolkit.testing import QWEN_TOKENIZER, TOKENIZERS, has_asset, load_tokenizer, read_text, require_asset, tiny_llama, tiny_qwen2

pytestmark = pytest.mark.skipif(not (has_asset(QWEN_TOKENIZER) and has_asset(TOKENIZERS['smollm2'])),
                                reason='needs the Qwen2.5 and SmolLM2 tokenizers in ../shared/data')
QWEN_TOKENS = 151_665

@pytest.fixture(scope='module')
def toks():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(require_asset(QWEN_TOKENIZER)), load_tokenizer('smollm2')

@pytest.fixture(scope='module')
def texts():
    return [l for l in read_text('tinystories').splitlines() if l.strip()][:12]

@pytest.fixture(scope='module')
def vocab_map(toks):
    from kd_toolkit.align import VocabMap
    return VocabMap.from_tokenizers(*toks)

def _teacher(vocab_size=151_936, dtype=torch.float32):
    "A tiny Qwen2 teacher whose padded rows (no token) are zero, so they never beat a real token into a top-k."
    t = tiny_qwen2(vocab_size=vocab_size, dtype=dtype)
    with torch.no_grad(): t.get_output_embeddings().weight[QWEN_TOKENS:] = 0
    return t

def test_vocabulary_sizes(toks):
    tq, ts = toks
    assert (len(tq), tq.vocab_size, len(ts)) == (QWEN_TOKENS, 151_643, 49_152)
    assert tq("Hello, world!")['input_ids'] == [9707, 11, 1879, 0]   # the shared data's check
    for rows in (151_936, 152_064):
        t = tiny_qwen2(vocab_size=rows)
        assert t.get_input_embeddings().weight.shape == (rows, 32) and t.config.tie_word_embeddings
        assert t(torch.tensor([[9707, 11, 1879, 0]])).logits.shape == (1, 4, rows)

def test_alignment(toks, texts):
    "Every aligned student position reads exactly the text its teacher position read; most positions have a partner."
    from kd_toolkit.align import alignment_report
    tq, ts = toks
    r = alignment_report(texts, ts, tq)
    assert r['prefix_mismatch'] == 0 and r['decode_mismatch'] == 0 and r['decode_checked'] > 100, r
    assert r['coverage'] > 0.9, r   # English prose: both byte-level BPEs end most tokens at the same characters

def test_fp16_emulation(toks, texts, vocab_map):
    """The teacher in fp16 on CPU, as on a P100/T4: finite logits that match fp32 to fp16 precision, and the mapped top-k
    (what cross-tokenizer KD trains on) from fp16 logits equal to the fp32 one up to fp16 rounding."""
    from kd_toolkit.losses import topk_teacher
    tq, _ = toks
    enc = tq(texts[:4], return_tensors='pt', padding=True)
    t32, t16 = _teacher(), _teacher(dtype=torch.float16)
    with torch.no_grad():
        l32 = t32(**enc).logits
        l16 = t16(**enc).logits
    m = enc['attention_mask'].bool()
    assert l16.dtype == torch.float16 and torch.isfinite(l16[m]).all()
    assert (l16[m].float() - l32[m]).abs().max() < 2e-2 * l32[m].abs().max()
    # fp16 logits of the same fp32 forward (the cast alone): the mapped top-k agrees
    a = vocab_map.map_topk(topk_teacher(l32[m], 8))
    b = vocab_map.map_topk(topk_teacher(l32[m].half(), 8))
    assert torch.isfinite(b.logprobs).all() and torch.isfinite(b.tail).all()
    same = (a.ids == b.ids).all(-1)
    assert same.float().mean() > 0.9, same.float().mean()   # (near-ties may swap order)
    torch.testing.assert_close(b.logprobs[same].exp(), a.logprobs[same].exp(), atol=2e-3, rtol=0)
    # a padded row never enters the top-k: every id is a real Qwen token
    assert int(topk_teacher(l32[m], 64).ids.max()) < QWEN_TOKENS

@pytest.mark.parametrize('rows', [151_936, 152_064])
def test_one_training_step(toks, texts, rows, tmp_path):
    "One optimizer step of cross-tokenizer KD (the default, the piece trie; padded rows past the tokenizer have no class) from the Qwen2 teacher: finite losses, the student moves, the teacher does not."
    from kd_toolkit.core import make_config
    from kd_toolkit.data import build_kd_dataset
    from kd_toolkit.train import distill
    tq, ts = toks
    teacher, student = _teacher(rows), tiny_llama(vocab_size=len(ts), hidden_size=32, num_layers=1)
    t0, s0 = [p.detach().clone() for p in teacher.parameters()], [p.detach().clone() for p in student.parameters()]
    ds = build_kd_dataset(texts, ts, tq, max_length=32)
    assert {'teacher_input_ids', 'align_idx', 'align_mask'} <= set(ds.column_names)
    cfg = make_config('smoke', output_dir=str(tmp_path), max_steps=1, warmup_steps=0, cross_tokenizer=True, kd_topk=8, eval_steps=0)
    r = distill(cfg, teacher, student, ds, None, ts, tq)
    h = r.history.iloc[0]
    assert h['step'] == 1 and h['kd_path'] == 'topk+trie'
    assert math.isfinite(h['raw/kd']) and h['raw/kd'] >= 0 and math.isfinite(h['raw/lm'])
    assert abs(h['raw/lm'] - math.log(len(ts))) < 0.5   # a random student is near uniform over SmolLM2's 49,152 ids
    assert any(not torch.equal(a, b) for a, b in zip(s0, student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(t0, teacher.parameters()))

def test_padded_rows_map_to_nothing(toks, vocab_map):
    """Teacher ids past the tokenizer (padded rows) in a top-k: no student id, and the target is the teacher's distribution
    given a real token. Here the only padded rows with mass are 8 lifted ones (all in the top 16), so that is exactly the
    softmax of the logits cut to the tokenizer: every listed real entry and the tail must equal it."""
    from kd_toolkit.losses import topk_teacher
    _, ts = toks
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 151_936, generator=g)
    logits[:, QWEN_TOKENS:] = -1e4
    logits[:, QWEN_TOKENS:QWEN_TOKENS + 8] = 6.0   # padded rows among the top 16
    tk = topk_teacher(logits, 16)
    pad = tk.ids >= QWEN_TOKENS
    assert pad.any(-1).all() and (~pad).any(-1).all()
    d = vocab_map.drop_padded(tk)
    real = logits[:, :QWEN_TOKENS].double().log_softmax(-1)
    torch.testing.assert_close(d.logprobs[~pad].double(), real.gather(1, tk.ids.clamp_max(QWEN_TOKENS - 1))[~pad], atol=1e-4, rtol=0)
    listed = torch.where(pad, 0., d.logprobs.double().exp()).sum(-1)
    torch.testing.assert_close(d.tail.double().exp(), 1 - listed, atol=1e-5, rtol=0)
    m = vocab_map.map_topk(tk)
    assert int(m.ids.max()) < len(ts)
    torch.testing.assert_close(m.logprobs.double().exp().sum(-1) + m.tail.double().exp(), torch.ones(64, dtype=torch.float64), atol=1e-5, rtol=0)

def test_padded_rows_in_the_top_k(toks, texts, tmp_path):
    """A teacher whose padded rows score highest (an untrained tail can): KD must not index past the vocabulary map (it did:
    IndexError, a device assert on GPU). Every top-8 entry is then a padded row: given a real token the target holds all
    its mass in the tail bucket, a distribution, so the KD term is a true divergence: finite and >= 0."""
    from kd_toolkit.core import make_config
    from kd_toolkit.data import build_kd_dataset
    from kd_toolkit.train import distill
    tq, ts = toks
    teacher = tiny_qwen2()
    def lift(module, inputs, out): out = out.clone(); out[..., QWEN_TOKENS:] += 20.0; return out
    teacher.lm_head.register_forward_hook(lift)
    ds = build_kd_dataset(texts[:4], ts, tq, max_length=32)
    cfg = make_config('smoke', output_dir=str(tmp_path), max_steps=1, warmup_steps=0, cross_tokenizer=True, kd_topk=8, eval_steps=0)
    r = distill(cfg, teacher, tiny_llama(vocab_size=len(ts), hidden_size=32, num_layers=1), ds, None, ts, tq)
    kd = r.history['raw/kd'].iloc[0]
    assert math.isfinite(kd) and kd >= 0

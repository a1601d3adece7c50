"""Issue 16's bugs, each reproduced as a new user met it, and its bad-input checks (real tokenizers from ../shared/data)."""
import warnings, pytest, torch
from types import SimpleNamespace
from transformers import AutoTokenizer
from kd_toolkit.testing import load_tokenizer, require_asset, data_dir, read_text
from kd_toolkit.align import (VocabMap, alignment_report, align_offsets, encode_offsets, end_of_document, truncation_pairs,
                              _prefix_mismatches, _spelled, token_bytes, check_pair)
from kd_toolkit.data import build_kd_dataset, pack_stream, special_tokens

def _tok(name):
    require_asset('models/stories260K' if name == 'tok512' else f'tokenizers/{name}')
    return load_tokenizer(name)

def _llama_eos():
    require_asset('tokenizers/llama2-spm')
    return AutoTokenizer.from_pretrained(data_dir()/'tokenizers/llama2-spm', add_eos_token=True)

TEXTS = ["Hello world, café.", "First Citizen:\nBefore we proceed any further, hear me speak.", "x y z"]

# (a) one end-of-document token per run
@pytest.mark.parametrize('teacher', ['gpt2', 'llama2-spm'])
def test_a_document_end_lm_and_kd_targets_agree(teacher):
    smol, t = _tok('smollm2'), _tok(teacher)
    assert smol.eos_token == '<|im_end|>' and smol.convert_ids_to_tokens(end_of_document(smol)) == '<|endoftext|>'
    vm = VocabMap.from_tokenizers(t, smol)
    for r in build_kd_dataset(TEXTS, smol, t):
        s_end, t_end = r['input_ids'][-1], r['teacher_input_ids'][-1]
        assert s_end == end_of_document(smol) and t_end == end_of_document(t)
        assert int(vm.t2s[t_end]) == s_end and bool(vm.exact[t_end])  # the mapped KD target is the LM target
        assert r['align_mask'][-1] and r['align_idx'][-1] == len(r['teacher_input_ids']) - 1

# (b) every dropped span is reported
def test_b_dropped_middle_chunks_are_reported():
    gpt2, tok512 = _tok('gpt2'), _tok('tok512')
    text = '日本語のテキストです'
    with pytest.warns(UserWarning, match=r'1 spans \(2\d\.\d\d% of the kept texts'):
        ds = build_kd_dataset([text], gpt2, tok512, max_length=10, teacher_max_length=10)
    gaps = [text[e:a] for e, a in zip([0] + list(ds['end']), list(ds['start']) + [len(text)]) if a > e]
    assert gaps == ['スト'] and sum(ds['skipped_spans']) == 1
    i = list(ds['start']).index(text.index('スト') + 2)  # reported on the chunk right after the dropped span
    assert ds['skipped_spans'][i] == 1

def test_b_spans_on_every_chunk_not_only_the_first():
    gpt2, tok512 = _tok('gpt2'), _tok('tok512')
    text = "Hello world " * 3 + "=" * 40 + " middle words here " + "=" * 40 + " the end."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = build_kd_dataset([text], gpt2, tok512, max_length=64, teacher_max_length=12)
    starts, ends, sk = list(ds['start']), list(ds['end']), list(ds['skipped_spans'])
    gap_ends = [a for e, a in zip([0] + ends, starts) if a > e]  # where each dropped span ends
    assert len(gap_ends) == 2 and sum(sk) == 2
    assert [starts[i] for i, k in enumerate(sk) if k] == gap_ends  # each reported on the chunk right after it

# (c) a tokenizer that appends EOS
def test_c_appended_eos_never_pairs_with_bos_and_does_not_raise():
    gpt2, llama, le = _tok('gpt2'), _tok('llama2-spm'), _llama_eos()
    _, offs = encode_offsets(le, ["Hello world"])
    assert offs[0][-1] == (11, 12)
    for s, t in [(le, llama), (llama, le), (le, gpt2), (gpt2, le), (le, le)]:
        r = alignment_report(TEXTS, s, t)  # as teacher it used to raise "teacher offsets are not increasing"
        assert r['prefix_mismatch'] == 0 and r['decode_mismatch'] == 0
    sids, so = encode_offsets(le, TEXTS)
    tids, to = encode_offsets(llama, TEXTS)  # BOS, no EOS
    for si, s_o, ti, t_o in zip(sids, so, tids, to):
        idx, m = align_offsets(s_o, t_o)
        assert si[-1] == le.eos_token_id and not m[-1]  # the student's EOS: no teacher EOS, so unaligned (not BOS)
        assert not (m & (idx == 0) & (torch.tensor(si) == le.eos_token_id)).any()
    ds = build_kd_dataset(TEXTS, gpt2, le)
    assert all(r['teacher_input_ids'][-1] == le.eos_token_id and r['align_mask'][-1] for r in ds)

# (d) added tokens that spell the bytes of ordinary ones
def test_d_vocab_map_of_a_tokenizer_with_duplicate_added_tokens_is_identity():
    require_asset('tokenizers/gpt2')
    code = AutoTokenizer.from_pretrained(data_dir()/'tokenizers/gpt2')
    assert code.add_tokens(list(' \t\n\r—…•€™→πλα')) == 13
    tb, _ = token_bytes(code)
    added = list(range(50257, 50270))
    assert all(tb.count(tb[i]) == 2 for i in added)  # each spells the bytes of an ordinary BPE token
    vm = VocabMap.from_tokenizers(code, code)
    assert torch.equal(vm.t2s, torch.arange(len(code))) and bool(vm.exact.all())
    vm2 = VocabMap.from_tokenizers(code, _tok('gpt2'))  # into plain GPT-2: the added ones go to their ordinary twins
    assert all(tb[int(vm2.t2s[i])] == tb[i] and int(vm2.t2s[i]) < 50257 for i in added)

# (e) alignment_report's check is independent of the offsets
def test_e_prefix_check_can_fail():
    gpt2, llama = _tok('gpt2'), _tok('llama2-spm')
    seed = alignment_report(TEXTS, gpt2, llama, aligner=truncation_pairs)
    assert seed['prefix_checked'] > 0 and seed['prefix_mismatch'] > 0.5 * seed['prefix_checked']
    ours = alignment_report(TEXTS, gpt2, llama)
    assert ours['prefix_mismatch'] == 0 and ours['prefix_checked'] == ours['aligned']
    text = "Hello world"
    s_sp = _spelled(token_bytes(gpt2)[0], gpt2(text)['input_ids'], text)
    t_sp = _spelled(token_bytes(llama)[0], llama(text)['input_ids'], text)
    assert _prefix_mismatches(s_sp, t_sp, [(0, 1), (1, 2)]) == 0  # Hello|Ġworld vs <s>|▁Hello|▁world
    assert _prefix_mismatches(s_sp, t_sp, [(0, 2)]) == 1  # 'Hello' against 'Hello world'

# bad input: no offsets, or too few common boundaries
def test_slow_tokenizers_are_refused_naming_the_role():
    gpt2 = _tok('gpt2')
    slow = SimpleNamespace(is_fast=False, name_or_path='my/slow-tok')
    for f, role in [(lambda: build_kd_dataset(["hi"], slow), 'student'), (lambda: build_kd_dataset(["hi"], gpt2, slow), 'teacher'),
                    (lambda: pack_stream(["hi"], gpt2, slow), 'teacher'), (lambda: check_pair(slow, gpt2, ["hi"]), 'student')]:
        with pytest.raises(ValueError, match=f"{role} tokenizer SimpleNamespace\\(my/slow-tok\\) is a slow tokenizer.*use_fast=True"): f()

def test_low_coverage_pair_is_named_with_its_share():
    gpt2, tok512 = _tok('gpt2'), _tok('tok512')
    texts = ["=" * 64, "-" * 64 + " x"]
    with pytest.warns(UserWarning, match=r"student LlamaTokenizer\(.*stories260K\) and teacher GPT2Tokenizer\(.*gpt2\) share common token boundaries at only \d\.\d%"):
        build_kd_dataset(texts, tok512, gpt2, max_length=128)
    with pytest.warns(UserWarning, match=r"at only \d\.\d%.*min_coverage=25%"):
        pack_stream(texts, tok512, gpt2)
    with pytest.raises(ValueError, match='share common token boundaries'):
        check_pair(tok512, gpt2, texts, error=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # ordinary text: no warning for the same pair
        assert check_pair(tok512, gpt2, read_text('tinystories', 3000).split('. ')) > 0.25

def test_a_real_slow_tokenizer_is_refused_everywhere_naming_the_side(tmp_path):
    """transformers 5's SentencePieceBackend is a real slow tokenizer: it drops return_offsets_mapping without a word. Every
    cross-tokenizer entry point refuses it in one line naming the side and the fix, before any model work."""
    from transformers import SentencePieceBackend
    from kd_toolkit.core import make_config
    from kd_toolkit.testing import tiny_llama
    from kd_toolkit.train import distill
    gpt2 = _tok('gpt2')
    slow = SentencePieceBackend(vocab_file=str(data_dir()/'tokenizers/llama2-spm/tokenizer.model'))
    assert not slow.is_fast and 'offset_mapping' not in slow("hi", return_offsets_mapping=True)
    cfg = make_config('smoke', output_dir=str(tmp_path), max_steps=1, cross_tokenizer=True, kd_topk=4, eval_steps=0)
    for f, role in [(lambda: build_kd_dataset(["hi"], slow, gpt2), 'student'), (lambda: build_kd_dataset(["hi"], gpt2, slow), 'teacher'),
                    (lambda: pack_stream(["hi"], slow, gpt2), 'student'), (lambda: check_pair(gpt2, slow, ["hi"]), 'teacher'),
                    (lambda: alignment_report(["hi"], slow, gpt2), 'student'), (lambda: VocabMap.from_tokenizers(slow, gpt2), 'teacher'),
                    (lambda: distill(cfg, tiny_llama(), tiny_llama(), build_kd_dataset(["Hello world."], gpt2), None, gpt2, slow), 'teacher')]:
        with pytest.raises(ValueError, match=f"^the {role} tokenizer SentencePieceBackend\\(.*\\) is a slow tokenizer.*use_fast=True") as e: f()
        assert '\n' not in str(e.value)

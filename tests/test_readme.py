"The README's usage block runs as written, with only its model names swapped for local ones (no hub at test time)."
import re
from pathlib import Path
from kd_toolkit.testing import require_asset, tiny_llama, load_tokenizer, STORIES260K, TEXTS

README = Path(__file__).resolve().parents[1]/'README.md'

def _usage_block() -> str:
    text = README.read_text(encoding='utf-8')
    section = text.split('## From another notebook', 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)

def test_readme_usage_block_runs(tmp_path, capsys):
    teacher = require_asset(STORIES260K)
    student = tmp_path/'student'
    tiny_llama(vocab_size=512, hidden_size=32, num_layers=1).save_pretrained(student)
    load_tokenizer('tok512').save_pretrained(student)
    texts = tmp_path/'stories.txt'
    texts.write_text(require_asset(TEXTS['tinystories']).read_text(encoding='utf-8').replace('\n', '\n\n'), encoding='utf-8')
    code = _usage_block()
    line = 'TEACHER, STUDENT, PRESET = "HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-135M", "fp16_16gb"'
    assert line in code, "the README's usage block changed: update this test's substitution"
    code = code.replace(line, f'TEACHER, STUDENT, PRESET = {str(teacher)!r}, {str(student)!r}, "smoke"')
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, 'README.md', 'exec'), {'TEXTS': str(texts), 'OUT': str(tmp_path/'out')})
    out = capsys.readouterr().out
    for k in ('student_ppl', 'student_bpb', 'kl', 'top1_agree'): assert k in out
    from transformers import AutoTokenizer   # the student folder is hub-ready: model, tokenizer, model card
    sd = tmp_path/'out'/'student'
    assert AutoTokenizer.from_pretrained(sd)('Once upon a time')['input_ids'] == load_tokenizer('tok512')('Once upon a time')['input_ids']
    assert (sd/'config.json').exists() and '## Results' in (sd/'README.md').read_text()

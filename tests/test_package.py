"Packaging: the installed library needs no dev tool (nbdev, execnb) at run time, only its declared requirements (fastcore for `@patch`)."
import subprocess, sys, pkgutil, textwrap
from pathlib import Path
import kd_toolkit

ROOT = Path(__file__).resolve().parents[1]

def test_modules_import_without_dev_tools():
    "Every kd_toolkit module imports with nbdev and execnb made unimportable."
    mods = [m.name for m in pkgutil.iter_modules(kd_toolkit.__path__) if not m.name.startswith('_')]
    assert 'core' in mods and 'testing' in mods
    code = textwrap.dedent(f"""
        import sys, importlib
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('nbdev', 'execnb'): raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        for m in {mods!r}: importlib.import_module('kd_toolkit.' + m)
        print('ok')""")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]

def test_version_matches_settings():
    ini = (ROOT/'settings.ini').read_text()
    assert f"version = {kd_toolkit.__version__}" in ini

def test_runtime_requirements_cover_fastcore():
    "Exported code may use fastcore.basics.patch, so fastcore is a runtime requirement, not only a dev one."
    ini = (ROOT/'settings.ini').read_text()
    req = next(l for l in ini.splitlines() if l.startswith('requirements ='))
    assert 'fastcore' in req, req

def _room_order() -> dict:
    "Module -> layer, from the notebooks: by number; a room's lettered sub-rooms (07a cache, 07b components, split out of 07 train) sit below it."
    import json, re
    order = {}
    for nb in (ROOT/'nbs').glob('[0-9]*.ipynb'):
        num, letter = re.match(r'(\d+)([a-z]?)_', nb.name).groups()
        src = ''.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'])
        if m := re.search(r'#\|\s*default_exp\s+(\w+)', src): order[m[1]] = (int(num), 0 if letter else 1, letter)
    return order

def test_no_room_imports_a_higher_room():
    "Lower rooms never import higher ones (issue 18): every kd_toolkit import in a module, at any depth, points down."
    import ast
    order, bad = _room_order(), []
    assert {'core', 'cache', 'components', 'train'} <= set(order) and order['cache'] < order['components'] < order['train'] < order['viz']
    for mod in order:
        for node in ast.walk(ast.parse((ROOT/'kd_toolkit'/f'{mod}.py').read_text())):
            if isinstance(node, ast.ImportFrom):
                m = node.module or ''
                names = [m.split('.')[-1]] if m and (node.level or m.startswith('kd_toolkit.')) else \
                        [a.name for a in node.names] if node.module == 'kd_toolkit' or (node.level and not m) else []
                bad += [(mod, n) for n in names if n in order and order[n] >= order[mod] and n != mod]
    assert not bad, f"rooms importing a higher (or same-level) room: {bad}"

def test_no_library_room_imports_testing():
    "`testing` is for lessons and tests: no other room imports it (issue 26); the assets registry sits below both users."
    import ast
    order, bad = _room_order(), []
    assert order['assets'] < order['testing'] and order['assets'] < order['sources']
    for mod in order:
        if mod == 'testing': continue
        for node in ast.walk(ast.parse((ROOT/'kd_toolkit'/f'{mod}.py').read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[-1] == 'testing': bad.append(mod)
            if isinstance(node, ast.ImportFrom) and any(a.name == 'testing' for a in node.names): bad.append(mod)
            if isinstance(node, ast.Import) and any(a.name.endswith('.testing') for a in node.names): bad.append(mod)
    assert not bad, f"library rooms importing testing: {sorted(set(bad))}"

def test_testing_reexports_the_assets():
    "Tests import the asset registry and `tiny_llama` from `testing`: the very objects `assets` defines (one list each)."
    from kd_toolkit import assets, testing
    names = ['DATA_ENV', 'TOKENIZERS', 'TEXTS', 'STORIES260K', 'QWEN_TOKENIZER', 'AssetMissing', 'data_dir', 'has_asset',
             'require_asset', 'load_tokenizer', 'load_stories260k', 'read_text', 'tiny_llama']
    assert [n for n in names if getattr(testing, n) is not getattr(assets, n)] == []
    assert set(names) <= set(testing.__all__)

def _literal_name_lists(mod:str) -> list:
    "Every tuple, list or set literal (and every dict literal's keys) of plain strings in a module, as a set of names."
    import ast
    out = []
    for n in ast.walk(ast.parse((ROOT/'kd_toolkit'/f'{mod}.py').read_text())):
        items = n.keys if isinstance(n, ast.Dict) else n.elts if isinstance(n, (ast.Tuple, ast.List, ast.Set)) else []
        names = {x.value for x in items if isinstance(x, ast.Constant) and isinstance(x.value, str)}
        if len(names) > 1: out.append(names)
    return out

def test_each_list_of_names_has_one_home():
    "Issue 26: the four lists of names (components, curriculum presets, divergences, cross-vocabulary losses) are each defined once; the rooms that read them (config, curriculum, losses, components, prepare and guard for train, recipe, viz) use that very object."
    import ast, warnings
    from kd_toolkit import core, components, curriculum as cur, losses, viz, recipe, prepare, guard, train
    homes = {'COMPONENTS': (components, 'components'), 'CURRICULUM_PRESETS': (core, 'core'),
             'DIVERGENCES': (core, 'core'), 'CROSS_VOCAB_LOSSES': (core, 'core')}
    lists = {k: tuple(getattr(m, k)) for k, (m, _) in homes.items()}
    # the config checks its knobs against the names it exports
    assert core._CHOICES['divergence'] is core.DIVERGENCES and core._CHOICES['cross_vocab_loss'] is core.CROSS_VOCAB_LOSSES
    assert losses.DIVERGENCES is core.DIVERGENCES and 'DIVERGENCES' in losses.__all__      # losses re-exports core's
    assert tuple(components.KD_LOSSES) == core.CROSS_VOCAB_LOSSES                              # the forms of kd, keyed by core's
    assert cur.CURRICULUM_PRESETS is core.CURRICULUM_PRESETS and recipe.CURRICULUM_PRESETS is core.CURRICULUM_PRESETS
    for name in core.CURRICULUM_PRESETS:                                                        # presets: named in core, made in curriculum
        assert cur.preset(name).table().equals(getattr(cur, f'{name}_curriculum')().table()), name
        assert recipe.pick_curriculum(name, 1, 2).table().equals(cur.preset(name).table()), name
    for room in (viz, prepare, guard): assert room.COMPONENTS is components.COMPONENTS, room    # the registry, read as is
    assert train._prepare is prepare._prepare and train._history is guard._history             # the trainer reads them there
    with warnings.catch_warnings(record=True) as seen:                       # the old tuple: a deprecated view of the registry
        warnings.simplefilter('always'); old = cur.COMPONENTS
    assert old == tuple(components.COMPONENTS) and seen[0].category is DeprecationWarning
    # no second list anywhere in the library: no other room writes all the names of one list in one literal
    # (viz.UNITS is a unit per registered component, a table and not a list: test_viz checks its keys are the registry's)
    bad = [(mod, k) for mod in _room_order() for k, names in lists.items() if mod != homes[k][1]
           for found in _literal_name_lists(mod) if set(names) <= found and (mod, k) != ('viz', 'COMPONENTS')]
    assert not bad, f"a list of names written again outside its home: {bad}"
    defined = lambda mod: {n.targets[0].id for n in ast.parse((ROOT/'kd_toolkit'/f'{mod}.py').read_text()).body
                           if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
    again = [(mod, k) for mod in _room_order() for k in lists if mod != homes[k][1] and k in defined(mod)]
    assert not again, f"a list defined again under its old name: {again}"      # (losses' DIVERGENCES: core's, imported)
    assert any(set(lists['DIVERGENCES']) <= f for f in _literal_name_lists('core'))           # (the scan finds the home's own)

def test_a_registered_component_is_known_everywhere():
    "A name added to the registry (its one home) is a curriculum name for `Curriculum`, the trainer's check, and the history's and charts' order."
    import pandas as pd
    from kd_toolkit import components, curriculum as cur, viz, prepare, guard
    reg = components.COMPONENTS; saved = dict(reg)
    try:
        reg.clear(); reg.update({'zz': saved['lm'], **saved})                # a new name, first in the registry
        assert cur.Curriculum({'zz': 1.0}).names == ['zz'] and prepare._resolve_curriculum({'zz': 1.0}).names == ['zz']
        assert viz.history_components(pd.DataFrame(columns=['step', 'raw/lm', 'raw/zz'])) == ['zz', 'lm']
        h = guard._history([{'step': 1, 'loss': 1.0, 'progress': 1.0, 'raw/lm': 1.0, 'raw/zz': 2.0}], 'full')
        assert list(h.columns[3:5]) == ['raw/zz', 'raw/lm']
    finally: reg.clear(); reg.update(saved)
    import pytest
    with pytest.raises(ValueError, match="unknown component"): cur.Curriculum({'zz': 1.0})

def test_chart_plumbing_has_one_home():
    "Issue 26: figures, images and line styles live in `charts`; curriculum keeps its public names as aliases, viz imports them."
    from kd_toolkit import charts, curriculum as cur, viz
    for name in ('figure_png', 'PngFigure', 'line_style', 'legend_outside'): assert getattr(cur, name) is getattr(charts, name)
    for name in ('figure_png', 'PngFigure', 'image_layout', 'show_png', 'line_style', 'legend_outside'):
        assert getattr(viz, name) is getattr(charts, name)
    assert not hasattr(cur, '_image_layout') and not hasattr(cur, '_show_png')

def test_moved_names_keep_an_alias_for_one_release():
    "Issue 26: align's old names resolve lazily to their new rooms (above align) with a DeprecationWarning."
    import importlib, warnings
    import kd_toolkit.align as align
    moved = {'uld_loss': 'xvocab', 'hybrid_loss': 'xvocab', 'token_logprobs': 'xvocab', 'boundary_tokens': 'xvocab',
             'chunk_sums': 'xvocab', 'binary_kl': 'xvocab', 'chunk_likelihood_loss': 'xvocab',
             'teacher_token_logprobs': 'xvocab', 'next_token_match': 'xvocab', 'kd_chunk': 'components',
             'bits_per_byte': 'evaluate'}
    for name, room in moved.items():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            got = getattr(align, name)
        assert got is getattr(importlib.import_module(f'kd_toolkit.{room}'), name), name
        assert [x.category for x in w] == [DeprecationWarning] and f'kd_toolkit.{room}.{name}' in str(w[0].message)
    import pytest
    for name in ('PathMap', 'path_topk'):
        with pytest.raises(ImportError, match='bench/pathmap.py'): getattr(align, name)
    with pytest.raises(AttributeError): align.no_such_name
    from kd_toolkit.components import MicroBatch, Step
    assert Step is MicroBatch  # components.Step (a micro-batch) is now MicroBatch; curriculum.Step is a schedule

"""The widgets and the live chart in a real JupyterLab, driven in headless Chromium with real pointer/keyboard events.

    make browser-test                                   # installs Chromium + the [browser] extra, then runs this
    .venv/bin/python bench/browser_check.py [--port 0] [--out bench/out/browser] [--timeout 420]
    KD_BROWSER_BREAK=slider .venv/bin/python bench/browser_check.py   # deliberate failure: must exit 1

Starts JupyterLab on 127.0.0.1 (a free port, or --port) from this venv, opens `bench/browser_check.ipynb` in the
system's Chromium (/usr/bin/chromium through /usr/bin/chromedriver: nothing is downloaded), runs all cells, then:
  editor   sliders render; dragging one (pointer) and typing into another's readout (keyboard) changes the plot's
           pixels and `editor.curriculum` (read back by re-running a cell with Shift+Enter);
  explorer the view toggle, the component list and the smoothing slider each change the figure; read back likewise;
  live     after a short `distill` with `LiveLossChart`, the cell holds exactly one image output, and that image equals
           a fresh drawing of the final history (so its last frame shows the final step).
Screenshots of each stage go to --out (a timestamped folder). Exit status: 0 passed, 1 a check failed, 2 set-up
missing (the message says what to install). Every wait has a timeout; the whole run has --timeout.
"""
from __future__ import annotations
import argparse, base64, contextlib, importlib.util, io, json, os, re, secrets, shutil, signal, socket, subprocess, sys
import tempfile, time, urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = Path(os.environ.get('KD_BROWSER_NOTEBOOK', HERE/'browser_check.ipynb'))
CHROMIUM = os.environ.get('KD_CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('KD_CHROMEDRIVER', '/usr/bin/chromedriver')
INSTALL_BROWSER = "apt-get update && apt-get install -y chromium chromium-driver (or run `make browser-test`, which does it)"
INSTALL_PY = "pip install -e '.[browser]' (or run `make browser-test`, which does it)"
CHROME_ARGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               '--disable-dev-shm-usage', '--no-proxy-server', '--window-size=1400,1000', '--force-device-scale-factor=1')

class SetupError(RuntimeError): "Something to install or free before the check can run (exit 2)."
class CheckFailed(AssertionError): "The front-end did not behave as promised (exit 1)."

# ---- set-up checks (fast, before anything starts) -------------------------------------------------------------------
def preflight(chromium:str=CHROMIUM, chromedriver:str=CHROMEDRIVER):
    "Raise `SetupError` naming what to install when the browser, its driver or a Python package is missing."
    bad = [f"{what} not found at {p}: install it with {INSTALL_BROWSER}"
           for p, what in ((chromium, 'Chromium'), (chromedriver, 'chromedriver')) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    missing = [m for m in ('jupyterlab', 'jupyterlab_widgets', 'ipywidgets', 'selenium', 'PIL') if importlib.util.find_spec(m) is None]
    if missing: bad.append(f"Python package(s) {missing} missing in {sys.executable}: {INSTALL_PY}")
    if bad: raise SetupError('; '.join(bad))

def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on now."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def check_port(port:int) -> int:
    "`port` if it can be bound on 127.0.0.1, else `SetupError` saying what to do."
    with socket.socket() as s:
        try: s.bind(('127.0.0.1', port))
        except OSError as e:
            raise SetupError(f"port {port} on 127.0.0.1 is taken ({e.strerror}): pass --port 0 to pick a free port, "
                             "or stop what listens there") from None
    return port

def wait_until(pred, timeout:float, what:str, every:float=0.25):
    "Poll `pred()` until it returns something truthy; `CheckFailed` after `timeout` seconds."
    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        try:
            if (v := pred()): return v
        except (CheckFailed, SetupError): raise
        except Exception as e: last = e   # the page is still changing under us: try again
        time.sleep(every)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last!r})"[:400] if last else ''))

# ---- the server ---------------------------------------------------------------------------------------------------
_SETTINGS = {'@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none'},   # every cell in the DOM
             '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {'fetchNews': 'false', 'checkForUpdates': False}}

def _get(url, timeout=5.0):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # 127.0.0.1 never goes through a proxy
    with opener.open(url, timeout=timeout) as r: return r.status, r.read()

def _our_processes(marker:str) -> list[int]:
    "Pids whose command line mentions `marker` (our private root folder): the kernels this run's server started."
    pids = []
    for p in Path('/proc').glob('[0-9]*'):
        with contextlib.suppress(OSError):
            if marker.encode() in (p/'cmdline').read_bytes() and int(p.name) != os.getpid(): pids.append(int(p.name))
    return pids

@contextlib.contextmanager
def jupyter_lab(root:Path, port:int, token:str, timeout:float=90):
    "A JupyterLab server from this venv on 127.0.0.1:`port` serving `root`, isolated from the user's Jupyter config."
    jdir = root/'.jupyter'
    for rel, s in _SETTINGS.items(): (jdir/'settings'/rel).parent.mkdir(parents=True, exist_ok=True); (jdir/'settings'/rel).write_text(json.dumps(s))
    env = {**os.environ, 'PATH': f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", 'JUPYTER_CONFIG_DIR': str(jdir/'config'),
           'JUPYTER_DATA_DIR': str(jdir/'data'), 'JUPYTER_RUNTIME_DIR': str(jdir/'runtime'), 'IPYTHONDIR': str(jdir/'ipython'),
           'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'PYTHONUNBUFFERED': '1'}
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}',
           f"--LabApp.user_settings_dir={jdir/'settings'}", f"--LabApp.workspaces_dir={jdir/'workspaces'}",
           '--LabApp.expose_app_in_browser=True'] + (['--allow-root'] if os.geteuid() == 0 else [])
    log = open(root/'jupyterlab.log', 'wb')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    def ready():
        if proc.poll() is not None:
            tail = (root/'jupyterlab.log').read_text(errors='replace')[-1500:]
            hint = f" (is port {port} taken? pass --port 0)" if 'already in use' in tail or 'Errno 98' in tail else ''
            raise SetupError(f"JupyterLab exited with code {proc.returncode}{hint}; its log ends:\n{tail}")
        return _get(f'{url}/api/status?token={token}')[0] == 200
    try:
        wait_until(ready, timeout, f'JupyterLab to answer on {url} (log: {root/"jupyterlab.log"})', every=0.5)
        yield url
    finally:
        with contextlib.suppress(Exception):   # shut the kernels down through the server first
            for k in json.loads(_get(f'{url}/api/kernels?token={token}')[1]):
                req = urllib.request.Request(f"{url}/api/kernels/{k['id']}?token={token}", method='DELETE')
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10)
        with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for pid in _our_processes(str(root)):   # a kernel that outlived its server (started in its own session)
            with contextlib.suppress(ProcessLookupError): os.kill(pid, signal.SIGKILL)
        log.close()

# ---- the browser --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def chromium(profile:Path, log:Path):
    "Headless system Chromium under Selenium, through the system chromedriver (no selenium-manager download)."
    os.environ.setdefault('SE_OFFLINE', 'true'); os.environ.setdefault('SE_AVOID_STATS', 'true')
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (*CHROME_ARGS, f'--user-data-dir={profile}'): opts.add_argument(a)
    try: driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER, log_output=str(log)), options=opts)
    except Exception as e: raise SetupError(f"Chromium did not start through {CHROMEDRIVER} ({str(e).splitlines()[0][:300]}); "
                                            f"reinstall with {INSTALL_BROWSER}; chromedriver log: {log}") from None
    try:
        driver.set_page_load_timeout(60); driver.set_script_timeout(30)
        yield driver
    finally:
        with contextlib.suppress(Exception): driver.quit()

def png_array(png:bytes):
    "RGB uint8 array of a PNG."
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))

def changed(a, b, tol:int=24) -> dict:
    "How two screenshots differ: the fraction of changed pixels and their bounding box (None when the shapes differ)."
    import numpy as np
    if a.shape != b.shape: return dict(frac=1.0, n=-1, box=None, shape=(a.shape, b.shape))
    d = (np.abs(a.astype(int) - b.astype(int)).max(-1) > tol)
    ys, xs = np.nonzero(d)
    return dict(frac=float(d.mean()), n=int(d.sum()), box=(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(xs) else None)

_MODEL_JS = """
const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!nb || !nb.content || !nb.content.model) return null;
const cells = nb.content.model.cells, out = [];
for (let i = 0; i < cells.length; i++) {
  const c = cells.get(i);
  out.push({type: c.type, src: c.sharedModel.getSource(), count: c.type === 'code' ? c.executionCount : null,
            outputs: c.type === 'code' ? c.outputs.toJSON() : []});
}
const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
return {cells: out, kernel: k ? k.status : null};
"""

class Lab:
    "One notebook open in JupyterLab: run, find cells by their `# [name]` marker, screenshot, read outputs."
    def __init__(self, driver, url, token, out:Path, root:Path):
        self.d, self.url, self.token, self.out, self.root, self.n = driver, url, token, out, root, 0

    def open(self, name:str, timeout=120):
        self.d.get(f'{self.url}/lab/tree/{name}?token={self.token}')
        wait_until(lambda: (m := self.model()) and m['kernel'] == 'idle' and len(self.d.find_elements('css selector', '.jp-Notebook .jp-Cell')) == len(m['cells']),
                   timeout, 'the notebook to open with an idle kernel (check jupyterlab.log in the run folder)')

    def model(self): return self.d.execute_script(_MODEL_JS)
    def shot(self, name, el=None):
        "Save a screenshot (of `el`, or the page) as NN_name.png; returns its PNG bytes."
        self.n += 1
        png = self.d.get_screenshot_as_png() if el is None else el.screenshot_as_png
        (self.out/f'{self.n:02d}_{name}.png').write_bytes(png)
        return png

    def index(self, marker:str) -> int:
        ix = [i for i, c in enumerate(self.model()['cells']) if c['src'].startswith(f'# [{marker}]')]
        if len(ix) != 1: raise CheckFailed(f"the notebook has {len(ix)} cells marked '# [{marker}]' (expected 1)")
        return ix[0]
    def cell(self, marker:str):
        el = self.d.find_elements('css selector', '.jp-Notebook .jp-Cell')[self.index(marker)]
        self.d.execute_script("arguments[0].scrollIntoView({block: 'start'})", el)
        return el
    def outputs(self, marker:str) -> list[dict]: return self.model()['cells'][self.index(marker)]['outputs']
    def count(self, marker:str): return self.model()['cells'][self.index(marker)]['count']

    def run_all(self, timeout):
        self.d.execute_script("return window.jupyterapp.commands.execute('notebook:run-all-cells')")
        def done():
            m = self.model()
            code = [c for c in m['cells'] if c['type'] == 'code']
            errs = [(c['src'].splitlines()[0], o) for c in code for o in c['outputs'] if o.get('output_type') == 'error']
            if errs:
                (first, o), = errs[:1]
                tb = re.sub(r'\x1b\[[0-9;]*m', '', '\n'.join(o.get('traceback', [])))
                raise CheckFailed(f"cell {first!r} raised {o.get('ename')}: {o.get('evalue')}\n" + tb[-2500:])
            busy = self.d.find_elements('css selector', '.jp-Notebook .jp-InputPrompt')
            return m['kernel'] == 'idle' and all(c['count'] for c in code) and not any('*' in b.text for b in busy)
        wait_until(done, timeout, 'all cells to run (kernel idle, every code cell numbered)', every=1.0)

    def rerun(self, marker:str, timeout=60) -> str:
        "Re-run a cell with the keyboard (click into it, Shift+Enter); returns its printed output."
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys
        before = self.count(marker)
        ed = self.cell(marker).find_element('css selector', '.jp-InputArea-editor')
        ActionChains(self.d).move_to_element(ed).click().pause(0.2).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        wait_until(lambda: (c := self.count(marker)) and c != before and self.model()['kernel'] == 'idle', timeout,
                   f"the '{marker}' cell to re-run after Shift+Enter")
        outs = self.outputs(marker)
        if err := [o for o in outs if o.get('output_type') == 'error']: raise CheckFailed(f"'{marker}' raised {err[0].get('ename')}: {err[0].get('evalue')}")
        return ''.join(o.get('text', '') for o in outs if o.get('output_type') == 'stream' and o.get('name') == 'stdout')

# ---- the checks ---------------------------------------------------------------------------------------------------
def _widget_image(lab, marker, what):
    "The <img> a widget cell shows its chart in (fails clearly when the widget or its image did not render)."
    el = lab.cell(marker)
    def img():
        if not el.find_elements('css selector', '.jupyter-widgets'): return None
        ims = [i for i in el.find_elements('css selector', '.jp-OutputArea img') if i.size['width'] > 50]
        return ims[0] if ims else None
    try: return wait_until(img, 30, f"the {what}'s chart image")
    except CheckFailed:
        txt = el.find_element('css selector', '.jp-Cell-outputArea').text[:300]
        hint = ("the widget did not render: the front-end needs jupyterlab_widgets (pip install jupyterlab_widgets) "
                if not el.find_elements('css selector', '.jupyter-widgets') else "the widget rendered but shows no chart image ")
        raise CheckFailed(f"{what}: {hint}(the output area shows: {txt!r})") from None

def _img_png(img): return img.screenshot_as_png

def _wait_change(lab, img_find, before_png, what, timeout=30):
    "Wait until the chart's screenshot differs from `before_png`; returns (after_png, diff)."
    a = png_array(before_png)
    def moved():
        png = _img_png(img_find())
        df = changed(a, png_array(png))
        return (png, df) if df['n'] != 0 and df['frac'] > 0.002 else None
    try: wait_until(moved, timeout, what)
    except CheckFailed:
        raise CheckFailed(f"{what} did NOT happen: the chart's pixels are unchanged after {timeout} s "
                          "(the widget callback did not redraw the figure)") from None
    last = [None]
    def settled():   # the same picture twice in a row: the redraw is complete (not caught half-way)
        png, prev = _img_png(img_find()), last[0]
        last[0] = png
        return png if prev is not None and changed(png_array(prev), png_array(png), tol=0)['n'] == 0 else None
    png = wait_until(settled, 15, f"the chart to settle after: {what}", every=0.4)
    return png, changed(a, png_array(png))

def _slider(row, label):
    "The (handle, readout) of the slider called `label` in a widget row."
    for s in row.find_elements('css selector', '.widget-slider'):
        if s.find_element('css selector', '.widget-label').text.strip() == label:
            return s.find_element('css selector', '.noUi-handle'), s.find_element('css selector', '.widget-readout')
    raise CheckFailed(f"no slider labelled {label!r} in this row")

def check_editor(lab, log):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    _widget_image(lab, 'editor', 'curriculum editor')
    start = json.loads(lab.rerun('editor-readback'))
    el = lab.cell('editor')
    sliders = el.find_elements('css selector', '.widget-slider')
    if len(sliders) != 3 * len(start): raise CheckFailed(f"editor: {len(sliders)} sliders rendered, expected 3 per component ({3 * len(start)})")
    rows = {r.find_element('css selector', '.widget-label').text.strip(): r for r in el.find_elements('css selector', '.widget-hbox')
            if r.find_elements('css selector', '.widget-slider')}
    if set(rows) != set(start): raise CheckFailed(f"editor rows {sorted(rows)} != components {sorted(start)}")
    before = lab.shot('editor_before', _widget_image(lab, 'editor', 'curriculum editor'))
    # 1) pointer: drag layerwise's `end` handle to the left
    handle, readout = _slider(rows['layerwise'], 'end')
    lab.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
    ActionChains(lab.d).move_to_element(handle).click_and_hold().move_by_offset(-10, 0).pause(0.2).move_by_offset(-10, 0).release().perform()
    shown = float(readout.text)
    log(f"editor: dragged 'layerwise end' from {start['layerwise'][1]} to {shown} (readout)")
    if shown == start['layerwise'][1]: raise CheckFailed("editor: dragging the 'layerwise end' handle did not move the slider")
    find = lambda: _widget_image(lab, 'editor', 'curriculum editor')
    png, df = _wait_change(lab, find, before, "editor: the plot changing after the 'layerwise end' slider moved")
    lab.shot('editor_after_drag', find())
    log(f"editor: plot changed after the drag: {df['frac']:.2%} of its pixels, in the box {df['box']}")
    # 2) keyboard: type a new peak into contrastive's readout
    _, ro = _slider(rows['contrastive'], 'peak')
    lab.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", ro)
    ActionChains(lab.d).double_click(ro).key_down(Keys.CONTROL).send_keys('a').key_up(Keys.CONTROL).send_keys('0.5').send_keys(Keys.ENTER).perform()
    png2, df2 = _wait_change(lab, find, png, "editor: the plot changing after typing 0.5 into 'contrastive peak'")
    lab.shot('editor_after_typing', find())
    log(f"editor: plot changed after typing: {df2['frac']:.2%} of its pixels, in the box {df2['box']}")
    now = json.loads(lab.rerun('editor-readback'))
    log(f"editor: editor.curriculum read back through the kernel: layerwise {now['layerwise']}, contrastive {now['contrastive']}")
    if abs(now['layerwise'][1] - shown) > 1e-6: raise CheckFailed(f"editor.curriculum's layerwise end is {now['layerwise'][1]}, the slider shows {shown}")
    if now['contrastive'][2] != 0.5: raise CheckFailed(f"editor.curriculum's contrastive peak is {now['contrastive'][2]}, 0.5 was typed")
    return dict(drag=df, typing=df2, curriculum=now)

def check_explorer(lab, log):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.select import Select
    find = lambda: _widget_image(lab, 'explorer', 'loss explorer')
    before = lab.shot('explorer_before', find())
    el = lab.cell('explorer')
    res = {}
    raw = [b for b in el.find_elements('css selector', '.widget-toggle-buttons button') if b.text.strip() == 'raw']
    if not raw: raise CheckFailed("explorer: no 'raw' view toggle button rendered")
    ActionChains(lab.d).move_to_element(raw[0]).click().perform()
    png, res['view'] = _wait_change(lab, find, before, "explorer: the figure changing after clicking the 'raw' view toggle")
    lab.shot('explorer_view_raw', find())
    w0, w1 = png_array(before).shape[1], png_array(png).shape[1]
    if not w1 < 0.75 * w0: raise CheckFailed(f"explorer: the 'raw' view should show one panel (a narrower chart), width {w0} -> {w1} px")
    sel = el.find_element('css selector', '.widget-select-multiple select')
    opt = [o for o in sel.find_elements('css selector', 'option') if o.text.strip() == 'kd']
    if not opt: raise CheckFailed("explorer: no 'kd' entry in the components list")
    ActionChains(lab.d).move_to_element(opt[0]).click().perform()   # a plain click selects only this one
    png, res['components'] = _wait_change(lab, find, png, "explorer: the figure changing after selecting only 'kd'")
    lab.shot('explorer_only_kd', find())
    sm = [s for s in el.find_elements('css selector', '.widget-slider') if s.find_element('css selector', '.widget-label').text.strip() == 'smoothing']
    if not sm: raise CheckFailed("explorer: no smoothing slider rendered")
    h = sm[0].find_element('css selector', '.noUi-handle')
    lab.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", h)
    ActionChains(lab.d).move_to_element(h).click_and_hold().move_by_offset(60, 0).pause(0.2).move_by_offset(10, 0).release().perform()
    png, res['smooth'] = _wait_change(lab, find, png, "explorer: the figure changing after dragging the smoothing slider")
    lab.shot('explorer_smoothed', find())
    state = json.loads(lab.rerun('explorer-readback'))
    log(f"explorer: view toggle changed {res['view']['frac']:.1%} of the pixels, the component list {res['components']['frac']:.1%}, "
        f"smoothing {res['smooth']['frac']:.1%}; read back: {state}")
    if state['view'] != 'raw' or state['components'] != ['kd'] or not state['smooth'] > 0:
        raise CheckFailed(f"explorer controls read back through the kernel are {state}: expected view 'raw', components ['kd'], smoothing > 0")
    return res | dict(state=state)

def check_live(lab, log):
    el = lab.cell('live')
    lab.shot('live_cell', el)
    outs = lab.outputs('live')
    imgs = [o for o in outs if 'image/png' in o.get('data', {})]
    kinds = [o.get('output_type') + ':' + (','.join(o.get('data', {})) or o.get('name', '')) for o in outs]
    dom = [i for i in el.find_elements('css selector', '.jp-OutputArea img')]
    log(f"live: the cell's outputs: {kinds}; rendered <img>: {len(dom)}")
    if len(imgs) != 1 or len(dom) != 1:
        raise CheckFailed(f"live: the training cell has {len(imgs)} image outputs ({len(dom)} rendered), expected exactly 1 "
                          f"(outputs: {kinds})")
    info = json.loads(lab.rerun('live-readback'))
    ref = png_array((lab.root/'live_final_reference.png').read_bytes())
    shown = png_array(base64.b64decode(imgs[0]['data']['image/png']))
    diff = changed(ref, shown, tol=8)
    log(f"live: final step {info['final_step']}, last drawn {info['last_drawn']}, {info['draws']} draws; "
        f"shown frame vs a fresh drawing of the final history: {diff['n']} differing pixels")
    if info['last_drawn'] != info['final_step'] or diff['n'] != 0:
        raise CheckFailed(f"live: the last frame is not the final history's chart (final step {info['final_step']}, "
                          f"last drawn {info['last_drawn']}, {diff['n']} pixels differ)")
    src = dom[0].get_attribute('src') or ''
    if not src.endswith(imgs[0]['data']['image/png'].strip()[-64:]):
        raise CheckFailed("live: the rendered <img> is not the cell's (last) image output")
    return info | dict(diff=diff['n'])

# ---- main ---------------------------------------------------------------------------------------------------------
def run(port:int=0, out:Path|None=None, timeout:float=420, log=print) -> dict:
    "Everything above, in order; raises `SetupError` or `CheckFailed`. Returns the checks' numbers."
    t0 = time.monotonic()
    preflight()
    port = free_port() if port == 0 else check_port(port)
    out = Path(out or HERE/'out'/'browser'/time.strftime('%Y%m%d-%H%M%S')); out.mkdir(parents=True, exist_ok=True)
    res = {'out': str(out)}
    with tempfile.TemporaryDirectory(prefix='kd-browser-') as tmp:
        root, token = Path(tmp), secrets.token_hex(16)
        shutil.copy(NOTEBOOK, root/NOTEBOOK.name)
        try:
            with jupyter_lab(root, port, token) as url, chromium(root/'.chromium-profile', out/'chromedriver.log') as d:
                log(f"JupyterLab on {url} (port {port}), Chromium {d.capabilities.get('browserVersion')}; up after {time.monotonic() - t0:.0f} s")
                lab = Lab(d, url, token, out, root)
                lab.open(NOTEBOOK.name)
                t1 = time.monotonic(); lab.run_all(timeout=max(60, timeout - (t1 - t0) - 120))
                lab.shot('after_run_all'); log(f"all cells ran in {time.monotonic() - t1:.0f} s")
                for name, check in (('editor', check_editor), ('explorer', check_explorer), ('live', check_live)):
                    try: res[name] = check(lab, log)
                    except CheckFailed:
                        with contextlib.suppress(Exception): lab.shot(f'FAILED_{name}')
                        raise
                    log(f"PASS {name}")
        finally:
            with contextlib.suppress(Exception): shutil.copy(root/'jupyterlab.log', out/'jupyterlab.log')
    res['seconds'] = round(time.monotonic() - t0, 1)
    return res

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--port', type=int, default=0, help='port for JupyterLab on 127.0.0.1 (0: a free one)')
    ap.add_argument('--out', type=Path, default=None, help='screenshot folder (default bench/out/browser/<time>)')
    ap.add_argument('--timeout', type=float, default=420, help='seconds for the whole run')
    a = ap.parse_args(argv)
    def _alarm(*_): raise CheckFailed(f"the whole run exceeded --timeout {a.timeout:.0f} s")
    old = signal.signal(signal.SIGALRM, _alarm); signal.alarm(int(a.timeout) + 30)
    t0 = time.monotonic()
    try:
        res = run(a.port, a.out, a.timeout)
        print(f"browser check PASSED in {res['seconds']} s; screenshots: {res['out']}")
        return 0
    except SetupError as e:
        print(f"browser check SET-UP MISSING: {e}", file=sys.stderr); return 2
    except CheckFailed as e:
        print(f"browser check FAILED after {time.monotonic() - t0:.0f} s: {e}", file=sys.stderr)
        print(f"screenshots: {a.out or HERE/'out'/'browser'} (newest folder)", file=sys.stderr); return 1
    finally:
        signal.alarm(0); signal.signal(signal.SIGALRM, old)

if __name__ == '__main__':
    sys.exit(main())

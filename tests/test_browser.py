"The widgets in a real JupyterLab + headless Chromium (bench/browser_check.py): set-up errors fast and clear; the full run slow."
import importlib.util, os, socket, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('browser_check', ROOT/'bench'/'browser_check.py')
bc = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bc)

def test_missing_browser_names_what_to_install(tmp_path):
    with pytest.raises(bc.SetupError) as e: bc.preflight(chromium=str(tmp_path/'chromium'), chromedriver=str(tmp_path/'chromedriver'))
    msg = str(e.value)
    assert f"Chromium not found at {tmp_path/'chromium'}" in msg and 'apt-get install -y chromium chromium-driver' in msg
    assert f"chromedriver not found at {tmp_path/'chromedriver'}" in msg

def test_taken_port_fails_fast_with_advice():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(bc.SetupError, match=f"port {port} on 127.0.0.1 is taken.*--port 0"): bc.check_port(port)
        assert bc.free_port() != port

def test_cli_exits_2_without_chromium_and_never_starts_a_server(tmp_path):
    "The command line: exit status 2 and the install command, in seconds (preflight runs before anything starts)."
    env = {**os.environ, 'KD_CHROMIUM': str(tmp_path/'no-chromium')}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(ROOT/'bench'/'browser_check.py'), '--out', str(tmp_path/'out')],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert 'SET-UP MISSING' in p.stderr and 'apt-get install -y chromium chromium-driver' in p.stderr
    assert time.monotonic() - t0 < 60 and not (tmp_path/'out').exists()

def test_wait_until_times_out_with_what_it_waited_for():
    t0 = time.monotonic()
    with pytest.raises(bc.CheckFailed, match='timed out after 0 s waiting for the moon'): bc.wait_until(lambda: False, 0.3, 'the moon', every=0.05)
    assert time.monotonic() - t0 < 2

def test_pixel_diff():
    import numpy as np
    a = np.zeros((10, 20, 3), np.uint8); b = a.copy(); b[2:4, 5:9] = 255
    assert bc.changed(a, b) == dict(frac=8 / 200, n=8, box=(5, 2, 8, 3))
    assert bc.changed(a, a)['n'] == 0 and bc.changed(a, b[:5])['box'] is None

@pytest.mark.slow
def test_widgets_in_jupyterlab_with_chromium(tmp_path):
    "The whole browser check (`make browser-test` runs the same); skipped with what to install when set-up is missing."
    try: bc.preflight()
    except bc.SetupError as e: pytest.skip(str(e))
    out = tmp_path/'screenshots'
    p = subprocess.run([sys.executable, str(ROOT/'bench'/'browser_check.py'), '--port', '0', '--out', str(out), '--timeout', '420'],
                       capture_output=True, text=True, timeout=540)
    print(p.stdout, p.stderr, f"screenshots: {out}", sep='\n')
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert {'PASS editor', 'PASS explorer', 'PASS live'} <= set(p.stdout.splitlines())
    assert len(list(out.glob('*.png'))) >= 9

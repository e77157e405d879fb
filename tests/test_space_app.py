"""fishzoo demo: the Gradio page in a real headless browser (Debian's chromium + chromium-driver, driven by
selenium), and the hub folder's app.py, both agreeing with fishzoo predict."""
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from fishzoo.cli import main
from fishzoo.predict import predict

CHROMIUM, CHROMEDRIVER = shutil.which('chromium'), shutil.which('chromedriver')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def served(trained_run):
    port = _free_port()
    env = {**os.environ, 'GRADIO_ANALYTICS_ENABLED': 'False'}
    proc = subprocess.Popen([sys.executable, '-m', 'fishzoo.cli', 'demo', str(trained_run), '--port', str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url, deadline = f'http://127.0.0.1:{port}/', time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            assert time.monotonic() < deadline, 'the demo server did not come up'
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.slow
def test_demo_page_in_a_browser(served, trained_run, image_dataset):
    """Upload an image on the page, press Submit, read the labels: the same top label and probability as
    fishzoo predict."""
    assert CHROMIUM and CHROMEDRIVER, \
        "the demo test needs Debian's chromium and chromium-driver (.ci/run installs them)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = sorted((image_dataset / 'val' / 'dog').iterdir())[0]
    (label, prob), *_ = predict(str(trained_run), [image], top_k=3, precision='fp32')[0]['labels']
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(served)
        wait = WebDriverWait(driver, 60, poll_frequency=0.3)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'input[type=file]'))[0].send_keys(str(image))
        submit = wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, 'button') if b.text.strip() == 'Submit'])
        time.sleep(1)  # the upload reaches the server before the click
        submit[0].click()
        shown = wait.until(lambda d: (lambda t: t if all(n in t for n in ('cat', 'dog', 'fish')) and '%' in t
                                      else None)(d.find_element(By.TAG_NAME, 'body').text))
    finally:
        driver.quit()
    lines = shown.splitlines()
    top = lines.index('labels') + 1  # Gradio's Label: the top label, then each label with its percentage
    assert lines[top] == label
    assert lines[top + 1] == label and lines[top + 2] == f'{round(prob * 100)}%'


def test_hub_folder_app_py_classifies_like_predict(trained_run, image_dataset, monkeypatch):
    """app.py, as a Space would run it (fp32 on any CPU), gives predict's fp32 labels and probabilities."""
    assert (trained_run / 'requirements.txt').read_text().startswith('timm')
    app = runpy.run_path(str(trained_run / 'app.py'), run_name='space_app')
    classify = app['FolderClassifier'](trained_run, top_k=3)
    image = sorted((image_dataset / 'val' / 'fish').iterdir())[0]
    expected = predict(str(trained_run), [image], top_k=3, precision='fp32')[0]['labels']
    got = classify(Image.open(image))
    assert list(got) == [n for n, _ in expected]
    assert all(abs(got[n] - p) < 1e-5 for n, p in expected)
    assert app['build_demo'](trained_run).title.endswith(trained_run.name)


def test_demo_mistakes(tmp_path, capsys):
    assert main(['demo', 'fishnet_s64']) == 2
    assert 'fishnet_s64: not a folder; fishzoo demo serves a hub folder' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert main(['demo', str(tmp_path / 'empty')]) == 2
    assert 'config.json: no such file' in capsys.readouterr().err


def test_the_page_api_is_called_predict(trained_run):
    """Gradio users call /predict; the page's endpoint was /FolderClassifier (the callable's class name)."""
    from fishzoo.space_app import build_demo
    demo = build_demo(trained_run)
    assert [d['api_name'] for d in demo.config['dependencies'] if d.get('api_visibility') == 'public'] == ['predict']

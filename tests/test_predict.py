"""fishzoo predict: labels and probabilities from a trained hub folder, CSV output, clear errors."""
import csv

from fishzoo.cli import main
from fishzoo.predict import predict


def test_predict_uses_label_names_and_data_config(trained_run, image_dataset):
    images = sorted((image_dataset / 'val' / 'dog').iterdir())[:2]
    results = predict(str(trained_run), images, top_k=3)
    assert [r['image'] for r in results] == [str(p) for p in images]
    for r in results:
        labels = [label for label, _ in r['labels']]
        assert sorted(labels) == ['cat', 'dog', 'fish']
        probs = [p for _, p in r['labels']]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4


def test_cli_prints_and_writes_csv(trained_run, image_dataset, tmp_path, capsys):
    image = next((image_dataset / 'val' / 'cat').iterdir())
    out = tmp_path / 'pred.csv'
    assert main(['predict', str(trained_run), str(image), '--top-k', '2', '--output', str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f'{image}: ') and printed.count('(') == 2
    rows = list(csv.DictReader(out.open()))
    assert [r['rank'] for r in rows] == ['1', '2'] and rows[0]['label'] in ('cat', 'dog', 'fish')


def test_cli_errors(trained_run, tmp_path, capsys):
    assert main(['predict', str(trained_run), str(tmp_path / 'nope.png')]) == 2
    assert 'nope.png: no such image file' in capsys.readouterr().err
    (tmp_path / 'bad.png').write_bytes(b'not an image')
    assert main(['predict', str(trained_run), str(tmp_path / 'bad.png')]) == 2
    assert 'bad.png: unreadable image' in capsys.readouterr().err
    assert main(['predict', str(tmp_path / 'no-model'), str(tmp_path / 'bad.png')]) == 2
    assert 'could not load the model' in capsys.readouterr().err

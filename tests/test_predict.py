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


def test_folders_globs_and_json(trained_run, image_dataset, capsys):
    import json
    val = image_dataset / 'val'
    assert main(['predict', str(trained_run), str(val / 'cat'), str(val / 'dog' / '*.png'), '--json']) == 0
    records = json.loads(capsys.readouterr().out)
    cats = sorted(str(p) for p in (val / 'cat').iterdir())
    dogs = sorted(str(p) for p in (val / 'dog').glob('*.png'))
    assert [r['image'] for r in records] == cats + dogs and dogs
    for r in records:
        assert set(r) == {'image', 'labels', 'scores'} and len(r['labels']) == len(r['scores']) == 3
        assert set(r['labels']) == {'cat', 'dog', 'fish'} and r['scores'] == sorted(r['scores'], reverse=True)
    assert main(['predict', str(trained_run), str(image_dataset / '**' / '*.jpg'), '--json']) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(list(image_dataset.rglob('*.jpg')))


def test_errors_name_the_model_and_the_pattern(trained_run, tmp_path, capsys):
    (tmp_path / 'x.png').write_bytes(b'')
    assert main(['predict', 'fishnet_s64', str(tmp_path / 'x.png')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('fishzoo predict: fishnet_s64: fishnet_s64 has no pretrained weights') and '  ' not in err
    assert main(['predict', str(trained_run), str(tmp_path / '*.jpg')]) == 2
    assert '*.jpg: the pattern matches no image file' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert main(['predict', str(trained_run), str(tmp_path / 'empty')]) == 2
    assert 'empty: a folder without image files' in capsys.readouterr().err

"Tests of covidnext.model: the exact architecture, a batch of one, and pretrained weights that fail loudly."
import hashlib
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision import models as tvm

from covidnext.model import (PretrainedWeightsError, build_from_config, count_params, covidnext50, create_model,
                             model_config)

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return covidnext50().eval()


def test_exact_param_count(model):
    assert count_params(model) == 62_838_084
    with torch.device('meta'):
        assert count_params(create_model('covidnext50_small')) == 37_666_116


def test_forward_batch_of_one(model):
    x = torch.randint(0, 256, (1, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 4)
        assert torch.allclose(model(x.float() / 255), y, atol=1e-5)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        model(x.float())  # 0-255 floats are refused, not silently misread


def test_config_round_trip(model):
    m2 = build_from_config(dict(model.cfg))
    assert {k: v.shape for k, v in m2.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_offline_pretrained_error(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))  # an empty cache
    def no_network(*args, **kwargs): raise URLError('no network')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    with pytest.raises(PretrainedWeightsError) as e:
        covidnext50(pretrained='imagenet')
    msg = str(e.value)
    for s in ('https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth', 'TORCH_HOME', 'hub/checkpoints',
              "pretrained='path/to/resnext50_32x4d-7cdf4587.pth'", '--pretrained', 'never falls back'):
        assert s in msg


def _fake_weights(folder: Path) -> tuple:
    sd = tvm.resnet18(weights=None).state_dict()
    tmp = folder / 'tmp.pth'
    torch.save(sd, tmp)
    return sd, tmp.read_bytes(), hashlib.sha256(tmp.read_bytes()).hexdigest()


def test_local_file_checksum(tmp_path):
    sd, data, digest = _fake_weights(tmp_path)
    good = tmp_path / f'resnet18-{digest[:8]}.pth'
    good.write_bytes(data)
    with pytest.warns(UserWarning, match='not torchvision'):
        m = create_model('resnet18', pretrained=good)
    assert torch.equal(m.backbone.conv1.weight.detach(), sd['conv1.weight'])
    assert m.cfg['weights_file'] == good.name and m.cfg['scale'] == 'imagenet'


def test_local_file_checksum_refusal(tmp_path):
    _, data, digest = _fake_weights(tmp_path)
    bad = tmp_path / f"resnet18-{'1' if digest[0] == '0' else '0'}{digest[1:8]}.pth"
    bad.write_bytes(data)
    with pytest.raises(PretrainedWeightsError, match='sha256'):
        create_model('resnet18', pretrained=bad)
    nohash = tmp_path / 'resnet18.pth'
    nohash.write_bytes(data)
    with pytest.raises(PretrainedWeightsError, match='no sha256 prefix'):
        create_model('resnet18', pretrained=nohash)
    with pytest.raises(PretrainedWeightsError, match='is not a file'):
        create_model('resnet18', pretrained=tmp_path / 'resnet18-f37072fd.pth')


def test_config_is_plain():
    import json
    cfg = model_config('covidnext50', pretrained='imagenet')
    assert json.loads(json.dumps(cfg)) == cfg

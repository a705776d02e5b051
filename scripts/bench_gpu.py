"""GPU throughput of the tile classifier: training step and inference, fp32 vs fp16 autocast.

Needs a CUDA device (nothing else from the slide stack). Prints tiles/s per mode, the AMP
speed-up as a ratio against fp32 measured in the same run, GPU utilisation sampled with
nvidia-smi during inference, and a short Lightning fit with precision 16-mixed on random
tiles (the path ``configs/default.yaml`` takes).

Usage: python scripts/bench_gpu.py [--backbone resnet50] [--tile-px 224] [--batch 256]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.meta import ModelMeta  # noqa: E402
from models.tile_classifier import TileClassifier  # noqa: E402


def hparams(backbone: str) -> ModelMeta:
    return ModelMeta(
        kind="tile",
        classes=["leiomyosarcoma", "meningioma", "other_sarcoma"],
        target_mpp=0.5,
        tile_px=224,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        backbone=backbone,
        aggregator="mean",
        temperature=1.0,
        package_version="bench",
        lr=3e-4,
        weight_decay=1e-4,
    )


@contextlib.contextmanager
def gpu_utilisation() -> Iterator[list[int]]:
    """GPU utilisation (%) sampled by nvidia-smi every 200 ms while the block runs."""
    samples: list[int] = []
    smi = subprocess.Popen(
        [
            "nvidia-smi",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
            "-lms",
            "200",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield samples
    finally:
        smi.terminate()
        samples += [int(v) for v in smi.communicate()[0].split() if v.isdigit()]


def rate(fn, batch: int, steps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--tile-px", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    torch.backends.cudnn.benchmark = True
    model = TileClassifier(hparams(args.backbone)).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.tile_px, args.tile_px, device="cuda").to(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 3, (args.batch,), device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")

    def train(amp: bool):
        def step():
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                loss = model.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        return step

    def infer(amp: bool):
        def step():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                model(x).float().softmax(1)

        return step

    model.train()
    t32 = rate(train(False), args.batch, args.steps)
    t16 = rate(train(True), args.batch, args.steps)
    model.eval()
    i32 = rate(infer(False), args.batch, args.steps)
    with gpu_utilisation() as util:
        i16 = rate(infer(True), args.batch, args.steps * 3)
    print(
        f"{torch.cuda.get_device_name()}: {args.backbone} at {args.tile_px} px, batch {args.batch}"
    )
    print(
        f"  training step  fp32 {t32:7.0f} tiles/s  fp16 {t16:7.0f} tiles/s  ratio {t16 / t32:.2f}"
    )
    print(
        f"  inference      fp32 {i32:7.0f} tiles/s  fp16 {i16:7.0f} tiles/s  ratio {i16 / i32:.2f}"
    )
    if util:
        median = sorted(util)[len(util) // 2]
        print(f"  GPU utilisation during fp16 inference: median {median}%, max {max(util)}%")

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    n = args.batch * 20
    data = TensorDataset(torch.randn(n, 3, args.tile_px, args.tile_px), torch.randint(0, 3, (n,)))

    def collate(batch):
        images, labels = zip(*batch, strict=True)
        return {
            "image": torch.stack(images),
            "label": torch.stack(labels),
            "slide": torch.arange(len(labels)) % 4,
        }

    loader = DataLoader(data, batch_size=args.batch, collate_fn=collate, num_workers=4)
    fresh = TileClassifier(hparams(args.backbone))
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=4,
    )
    start = time.perf_counter()
    trainer.fit(fresh, loader, loader)
    seconds = time.perf_counter() - start
    print(f"  Lightning fit, precision 16-mixed, {n} tiles + validation: {seconds:.1f} s")
    print(f"  validation slide metrics computed: {sorted(fresh.last_slide_metrics)}")


if __name__ == "__main__":
    main()

"""Tiny random Hugging Face models, generated datasets and quiet Trainer arguments."""

from __future__ import annotations

import torch
import transformers
from torch.utils.data import Dataset

SIZE, CLASSES = 32, 3


class Squares(Dataset):
    """A bright square on noise; its class decides where it sits (left, middle, right), so
    a model that learns looks at the square. ``boxes``: the square's pixel box."""

    def __init__(self, n: int, seed: int = 0, segmentation: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.3
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        self.boxes = torch.zeros(n, 4)
        self.masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
        for i, c in enumerate(self.labels.tolist()):
            x0 = 2 + c * 10
            y0 = int(torch.randint(2, SIZE - 10, (1,), generator=g))
            self.images[i, :, y0 : y0 + 8, x0 : x0 + 8] = 1.0
            self.boxes[i] = torch.tensor([x0, y0, x0 + 8, y0 + 8])
            self.masks[i, y0 : y0 + 8, x0 : x0 + 8] = c + 1
        self.segmentation = segmentation

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if self.segmentation:
            return {"pixel_values": self.images[i], "labels": self.masks[i]}
        return {"pixel_values": self.images[i], "labels": self.labels[i], "boxes": self.boxes[i]}


def tiny_vit(dropout: float = 0.0) -> transformers.PreTrainedModel:
    config = transformers.ViTConfig(
        hidden_dropout_prob=dropout,
        image_size=SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=CLASSES,
    )
    return transformers.ViTForImageClassification(config)


def tiny_segformer() -> transformers.PreTrainedModel:
    config = transformers.SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        patch_sizes=[7, 3],
        strides=[4, 2],
        decoder_hidden_size=32,
        num_labels=CLASSES + 1,
    )
    return transformers.SegformerForSemanticSegmentation(config)


def tiny_upernet() -> transformers.PreTrainedModel:
    """UperNet over a tiny random ConvNeXt backbone (four stages, one block each)."""
    backbone = transformers.ConvNextConfig(
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone,
        hidden_size=32,
        use_auxiliary_head=False,
        num_labels=CLASSES + 1,
    )
    return transformers.UperNetForSemanticSegmentation(config)


def training_args(out, **kwargs) -> transformers.TrainingArguments:
    base = dict(
        output_dir=str(out),
        use_cpu=True,
        report_to=["tensorboard"],
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        num_train_epochs=2,
        eval_strategy="epoch",
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-3,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    base.update(kwargs)
    return transformers.TrainingArguments(**base)


def whole_set_by_hand(model, dataset: Squares, layer: str, count: int | None = None) -> dict:
    """``energy_in_box``, ``pointing_game``, ``no_evidence_rate`` of Grad-CAM over the first
    ``count`` items of ``dataset`` (all by default) for their labels, from ``model``'s
    weights: a map without positive evidence counts 0 energy and no hit."""
    from lightning_gradcam import CAMEngine
    from lightning_gradcam.core.drift import box_masks, energy_share, pointing_hits

    count = len(dataset) if count is None else count
    images, labels, boxes = dataset.images[:count], dataset.labels[:count], dataset.boxes[:count]
    model.eval()
    result = CAMEngine(model, layer=layer, methods=("gradcam",)).explain(images, targets=labels)
    maps = result.maps["gradcam"][:, 0].float()
    evidence = result.layer_maps["gradcam"][:, 0].flatten(1).amax(1) > 0
    region = box_masks(boxes, tuple(images.shape[-2:]))
    energy = torch.where(evidence, energy_share(maps, region), 0.0)
    hits = pointing_hits(maps, region) & evidence
    return {
        "energy_in_box": float(energy.mean()),
        "pointing_game": float(hits.float().mean()),
        "no_evidence_rate": float((~evidence).float().mean()),
    }

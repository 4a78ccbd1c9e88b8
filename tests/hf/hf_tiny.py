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


def tiny_vit() -> transformers.PreTrainedModel:
    config = transformers.ViTConfig(
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

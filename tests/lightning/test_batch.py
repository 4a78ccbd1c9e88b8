"""The callback's samples: the default batch parser, CPU clones, shape checks."""

from __future__ import annotations

import pytest
import torch

from lightning_gradcam.tasks.classification_samples import (
    default_batch_parser,
    make_samples,
    to_samples,
)


def test_default_batch_parser_forms():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    assert default_batch_parser(x)["images"] is x
    assert default_batch_parser((x, y))["labels"] is y
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 4)
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    # (images, labels, boxes) and (images, labels, masks): every field used, told by shape
    assert default_batch_parser((x, y, boxes))["boxes"] is boxes
    assert default_batch_parser((x, y, masks))["masks"] is masks
    assert default_batch_parser((x, boxes))["boxes"] is boxes
    # anything the parser would not read is refused, never dropped in silence
    with pytest.raises(ValueError, match=r"element 1 .*\(4, 2\).*batch_parser="):
        default_batch_parser([x, torch.rand(4, 2)])  # not class ids
    with pytest.raises(ValueError, match=r"element 2 .*batch_parser="):  # one-hot: no box
        default_batch_parser((x, y, torch.eye(4)))
    with pytest.raises(ValueError, match="4 elements is more than it reads.*batch_parser="):
        default_batch_parser((x, y, boxes, masks))
    with pytest.raises(ValueError, match="reads as labels after boxes"):
        default_batch_parser((x, boxes, y))
    parsed = default_batch_parser({"image": x, "label": y, "boxes": torch.zeros(4, 4)})
    assert parsed["boxes"].shape == (4, 4)
    with pytest.raises(ValueError, match="cannot find images in a batch dict with keys"):
        default_batch_parser({"foo": x})
    with pytest.raises(ValueError, match="batch_parser"):
        default_batch_parser("nope")


def test_samples_are_cpu_clones_outside_inference_mode():
    with torch.inference_mode():
        x = torch.rand(2, 3, 8, 8)
    samples = to_samples((x, torch.tensor([1, 2])))
    assert not samples.images.is_inference()
    assert samples.images.data_ptr() != x.data_ptr()
    samples.images.requires_grad_()  # would raise on an inference tensor


def test_make_samples_validates_shapes():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"labels must be 2 integer class ids"):
        make_samples(x, labels=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"boxes must be \(2, 4\)"):
        make_samples(x, boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"masks must be \(2, 8, 8\)"):
        make_samples(x, masks=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="floating-point .* or uint8"):
        make_samples(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    assert make_samples(torch.zeros(2, 3, 8, 8, dtype=torch.uint8)).images.dtype == torch.uint8

"""core.tracking: first/previous maps per key, drift, energy, matching detections, no
positive evidence, saved state."""

from __future__ import annotations

import pytest
import torch

from lightning_gradcam.core.drift import energy_in_boxes, energy_share, map_drift, pointing_hits
from lightning_gradcam.core.tracking import DriftTracker, has_evidence, match_detections


def _blob(cx: float, cy: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 20.0)


def _update(tracker, key, dets):
    """``dets``: ``(class_id, box, map)`` in score order, as the hook passes them."""
    return tracker.update(
        key,
        torch.stack([m for _, _, m in dets]),
        boxes=torch.tensor([b for _, b, _ in dets], dtype=torch.float32),
        classes=torch.tensor([c for c, _, _ in dets]),
    )


def test_samples_drift_against_previous_and_first_and_energy_in_box():
    torch.manual_seed(0)
    maps = [torch.rand(3, 8, 8) for _ in range(3)]
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3)
    tracker = DriftTracker()
    first = tracker.update("gradcam", maps[0], boxes=boxes)
    # nothing to compare with yet
    assert set(first) == {"energy_in_box", "pointing_game", "no_evidence_rate"}
    assert first["energy_in_box"] == pytest.approx(float(energy_in_boxes(maps[0], boxes).mean()))
    second = tracker.update("gradcam", maps[1], boxes=boxes)
    assert second["drift_vs_prev"] == pytest.approx(second["drift_vs_first"])
    third = tracker.update("gradcam", maps[2], boxes=boxes)
    assert third["drift_vs_prev"] == pytest.approx(float(map_drift(maps[2], maps[1]).mean()))
    assert third["drift_vs_first"] == pytest.approx(float(map_drift(maps[2], maps[0]).mean()))
    assert "energy_in_box" not in DriftTracker().update("other", maps[0])  # no region given
    assert torch.equal(tracker.first["gradcam"].maps, maps[0])
    assert torch.equal(tracker.previous["gradcam"].maps, maps[2])


def test_masks_give_energy_share_and_keys_are_independent():
    torch.manual_seed(1)
    maps = torch.rand(2, 6, 6)
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[:, :3] = True
    tracker = DriftTracker()
    values = tracker.update("a", maps, masks=masks)
    assert values["energy_in_box"] == pytest.approx(float(energy_share(maps, masks).mean()))
    assert "drift_vs_prev" not in tracker.update("b", maps, masks=masks)


def test_other_samples_are_refused():
    tracker = DriftTracker()
    tracker.update("gradcam", torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="the same samples must be tracked"):
        tracker.update("gradcam", torch.rand(3, 4, 4))


def test_detections_are_matched_by_class_and_overlap():
    tracker = DriftTracker(match_iou=0.5)
    first = [(0, [0, 0, 16, 16], _blob(8, 8)), (1, [16, 16, 32, 32], _blob(24, 24))]
    values = _update(tracker, 0, first)
    assert "drift_vs_prev" not in values  # nothing to compare with yet
    expected_energy = energy_in_boxes(
        torch.stack([_blob(8, 8), _blob(24, 24)]), torch.tensor([[0, 0, 16, 16], [16, 16, 32, 32]])
    ).mean()
    assert values["energy_in_box"] == pytest.approx(float(expected_energy))

    moved = _blob(12, 10)
    second = [
        (0, [1, 1, 17, 17], moved),  # same class, IoU 0.79: matched
        (2, [16, 16, 32, 32], _blob(0, 0)),  # same place, other class: not
    ]
    values = _update(tracker, 0, second)
    drift = float(map_drift(moved[None], _blob(8, 8)[None])[0])
    assert drift > 0.05
    assert values["drift_vs_prev"] == pytest.approx(drift)
    assert values["drift_vs_first"] == pytest.approx(drift)

    far = [(0, [8, 8, 24, 24], _blob(16, 16))]  # IoU 0.22 with the last one
    values = _update(tracker, 0, far)
    assert "drift_vs_prev" not in values and "drift_vs_first" not in values
    assert set(values) == {"energy_in_box", "pointing_game", "no_evidence_rate"}


def test_matching_is_greedy_and_uses_each_earlier_detection_once():
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    now = torch.tensor([[0.0, 0.0, 10.0, 11.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    pairs = match_detections(now, torch.tensor([0, 0, 0]), ref, torch.tensor([0, 0]), 0.5)
    assert pairs == [(0, 0), (2, 1)]  # the first (highest score) takes box 0; the second none
    assert match_detections(now[:0], torch.zeros(0), ref, torch.tensor([0, 0])) == []
    with pytest.raises(ValueError, match="need their boxes"):
        DriftTracker().update(0, torch.rand(1, 4, 4), classes=torch.tensor([0]))


def test_maps_without_positive_evidence_are_left_out_only_when_asked():
    blob, moved, empty = _blob(8, 8), _blob(12, 10), torch.zeros(32, 32)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)
    assert has_evidence(torch.stack([blob, empty])).tolist() == [True, False]

    counted, left_out = DriftTracker(), DriftTracker(leave_out_empty=True)
    for tracker in (counted, left_out):
        tracker.update("m", torch.stack([blob, blob]), boxes=boxes)
    now = torch.stack([moved, empty])  # the second sample's map vanished
    as_zero = counted.update("m", now, boxes=boxes)
    said = left_out.update("m", now, boxes=boxes)
    drift = float(map_drift(moved[None], blob[None])[0])
    energy = float(energy_in_boxes(moved[None], boxes[:1])[0])
    # counted as 0: a flat map drifts by 1 and has no energy in the box
    assert as_zero["drift_vs_prev"] == pytest.approx((drift + 1.0) / 2)
    assert as_zero["energy_in_box"] == pytest.approx(energy / 2)
    # left out: only the first sample counts
    assert said["drift_vs_prev"] == pytest.approx(drift)
    assert said["energy_in_box"] == pytest.approx(energy)
    # no evidence anywhere: no value rather than a made-up one
    nothing = left_out.update("m", torch.zeros(2, 32, 32), boxes=boxes)
    assert nothing == {"no_evidence_rate": 1.0}
    # an explicit flag overrides the maps: a map marked empty is left out even if non-zero
    marked = DriftTracker(leave_out_empty=True)
    values = marked.update("m", torch.stack([blob, moved]), boxes=boxes, evidence=[True, False])
    assert values["energy_in_box"] == pytest.approx(float(energy_in_boxes(blob[None], boxes[:1])))


def test_state_round_trip_continues_the_series():
    torch.manual_seed(2)
    maps = [torch.rand(2, 5, 5) for _ in range(3)]
    tracker = DriftTracker()
    tracker.update("gradcam", maps[0])
    tracker.update("gradcam", maps[1])
    _update(tracker, (0, "gradcam"), [(1, [0, 0, 3, 3], maps[0][0])])
    state = tracker.state_dict()
    assert set(state["first_maps"]) == {"gradcam", (0, "gradcam")}
    assert set(state["first_classes"]) == {(0, "gradcam")}

    restored = DriftTracker()
    restored.load_state_dict(state)
    assert restored.update("gradcam", maps[2]) == tracker.update("gradcam", maps[2])
    again = [(1, [0, 0, 3, 3], maps[1][0])]
    assert _update(restored, (0, "gradcam"), again) == _update(tracker, (0, "gradcam"), again)
    # the callback's older checkpoints hold only first_maps / prev_maps
    old = DriftTracker()
    old.load_state_dict({"first_maps": {"gradcam": maps[0]}, "prev_maps": {"gradcam": maps[1]}})
    assert old.update("gradcam", maps[2])["drift_vs_first"] == pytest.approx(
        float(map_drift(maps[2], maps[0]).mean())
    )


def test_pointing_game_on_hand_made_maps():
    maps = torch.zeros(4, 10, 10)
    maps[0, 2, 3] = 1.0  # peak inside the box
    maps[1, 8, 8], maps[1, 2, 2] = 1.0, 0.5  # peak outside, the box only has the second best
    maps[2, 1, 1] = maps[2, 9, 9] = 0.7  # a tie, one of the tied pixels inside
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 4)  # pixels x, y in 0..4
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    masks[:, :5, :5] = True
    assert pointing_hits(maps, masks).tolist() == [True, False, True, False]  # zero map: no hit

    tracker = DriftTracker(leave_out_empty=True)
    values = tracker.update("gradcam", maps, boxes=boxes)
    # the flat 4th map has no evidence: left out of the game, counted in the rate
    assert values["pointing_game"] == pytest.approx(2 / 3)
    assert values["no_evidence_rate"] == pytest.approx(1 / 4)
    assert tracker.last_per_image["pointing_game"] == [1.0, 0.0, 1.0, None]
    counted = DriftTracker().update("gradcam", maps, masks=masks)
    assert counted["pointing_game"] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="must have the maps' shape"):
        pointing_hits(maps, masks[:, :5])


def test_always_defined_gives_every_scalar_at_every_update():
    """What the callback's tasks and the detectron2 hook log: a map without evidence puts 0
    in its box and does not point inside it, at every update."""
    blob, moved, empty = _blob(8, 8), _blob(12, 10), torch.zeros(32, 32)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)
    tracker = DriftTracker(leave_out_empty=True, always_defined=True)
    first = tracker.update("m", torch.stack([blob, empty]), boxes=boxes)
    energy = float(energy_in_boxes(blob[None], boxes[:1])[0])
    assert first == {
        "no_evidence_rate": 0.5,
        "energy_in_box": pytest.approx(energy / 2),
        "pointing_game": 0.5,
    }
    assert tracker.last_per_image["energy_in_box"] == [pytest.approx(energy), 0.0]
    # a later pass: drift over the pairs with evidence at both passes only
    later = tracker.update("m", torch.stack([moved, blob]), boxes=boxes)
    assert later["drift_vs_prev"] == pytest.approx(float(map_drift(moved[None], blob[None])[0]))
    # nothing at all has evidence: every key is still there
    nothing = tracker.update("m", torch.zeros(2, 32, 32), boxes=boxes)
    assert nothing == {
        "no_evidence_rate": 1.0,
        "energy_in_box": 0.0,
        "pointing_game": 0.0,
    }
    # no map at all (an image without detections): the same keys; references kept
    assert set(tracker.update("m", torch.zeros(0, 32, 32), boxes=torch.zeros(0, 4))) == set(nothing)
    assert tracker.previous["m"].maps.shape[0] == 2

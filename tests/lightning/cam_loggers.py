"""Reading back what W&B (offline) and MLflow (SQLite store) received, with their own libraries."""

from __future__ import annotations

import glob
import json
import os
import struct
import time

import cv2
import numpy as np


def _wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``): a ``:W&B`` header (7 bytes), then
    LevelDB-log framing (32 KiB blocks; records of checksum, length, type, data, split into
    first/middle/last pieces across blocks)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield data
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            yield pending + data
            pending = b""


def _finished_run_records(path, timeout=60.0):
    """The parsed records of a run file once W&B has written its ``exit`` record: after
    ``run.finish()`` W&B's service may still be writing the file (seen: the last history
    row missing when read at once)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        records = []
        try:
            for data in _wandb_records(path):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(data)
                records.append(record)
        except DecodeError:  # a record still being written
            records = []
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.2)


def wandb_history(save_dir):
    """Every history row of the one offline run under ``save_dir``: a list of flat dicts
    (nested keys joined by ``/``), in logging order."""

    runs = glob.glob(os.path.join(str(save_dir), "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, runs
    records = _finished_run_records(runs[0])
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def wandb_run_dir(save_dir):
    (run,) = glob.glob(os.path.join(str(save_dir), "wandb", "offline-run-*"))
    return run


def read_png_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a PNG"
    return np.ascontiguousarray(image[..., ::-1])

"""Write docs/default-layers.md: the default layer and grid of one model per timm
architecture module, every torchvision classifier and every transformers image
classifier, random init, from the same sweep as ``tests/models`` (``-m slow``).

    PYTHONPATH=. python docs/make_default_layers.py [--only timm|torchvision|transformers]

Takes minutes (it builds every model); the table says when and with which versions it ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.models import zoo  # noqa: E402


def _rows(library: str) -> list[dict]:
    if library == "timm":
        import timm

        items = [(m, lambda m=m: zoo.build_timm(m)) for m in sorted(timm.list_modules())]
    elif library == "torchvision":
        items = [(n, lambda n=n: zoo.build_torchvision(n)) for n in zoo.torchvision_names()]
    else:
        items = [(c, lambda c=c: zoo.build_transformers(c)) for c in zoo.transformers_classes()]
    rows = []
    for family, build in items:
        start = time.perf_counter()
        row = {"library": library, "family": family}
        try:
            built = build()
            if built is None:
                row["status"] = "skipped: cannot build or run here"
            else:
                checked = zoo.check(built)
                row.update(
                    status="passed",
                    model=built.name,
                    size=list(built.size),
                    layer=checked.layer,
                    grid=list(checked.grid),
                    kind=checked.kind,
                    prefix=checked.prefix,
                    source=checked.source,
                    corners=checked.corners,
                )
        except AssertionError as exc:
            row["status"] = f"FAILED: {str(exc)[:200]}"
        except Exception as exc:  # noqa: BLE001 - the table reports it
            row["status"] = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


_LAYOUT = {"BCHW": "(B, C, h, w)", "BHWC": "(B, h, w, C)"}
_CORNERS = {1: "peak", 0: "direction", -1: "spread"}


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| family | model | input | default layer | grid | layout | decided by | corners |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "passed":
            gap = zoo.KNOWN_GAPS.get((r["library"], r["family"]))
            skip = zoo.HF_SKIP.get(r["family"])
            status = f"known gap: {gap}" if gap else f"skipped: {skip}" if skip else r["status"]
            lines.append(f"| {r['family']} | | | {status} | | | | |")
            continue
        layout = _LAYOUT.get(r["kind"], f"tokens, {r['prefix']} prefix")
        how = r["source"].replace(" (its grid; no module returns that tensor itself)", "*")
        size = "x".join(map(str, r["size"]))
        grid = "x".join(map(str, r["grid"]))
        lines.append(
            f"| {r['family']} | `{r['model']}` | {size} | `{r['layer']}` | {grid} | "
            f"{layout} | {how} | {_CORNERS.get(r['corners'], '')} |"
        )
    return lines


def write(rows: list[dict], seconds: float) -> str:
    import timm
    import torch
    import torchvision
    import transformers

    passed = sum(r["status"] == "passed" for r in rows)
    skipped = sum(r["status"].startswith("skipped") for r in rows)
    failed = len(rows) - passed - skipped
    text = [
        "# Default layers across the model libraries",
        "",
        "<!-- Written by docs/make_default_layers.py from the sweep in tests/models; do not"
        " edit by hand. -->",
        "",
        "What `layer=None` explains (in `CAMEngine`, `GradCAMCallback` and `lightning-gradcam`"
        " alike), for one randomly initialised model per timm architecture module, every"
        " torchvision classifier and every transformers image classifier. Each row passed"
        " the sweep's checks: the grid is the library's own last feature grid (timm's"
        " `forward_intermediates`, transformers' hidden states), and the grid follows the"
        " image (brightening one corner moves the layer's activations towards that corner"
        " of the grid; see *corners*)."
        " See [layouts](layouts.md#the-default-layer) for how the layer is found.",
        "",
        f"Swept with torch {torch.__version__}, timm {timm.__version__}, torchvision"
        f" {torchvision.__version__}, transformers {transformers.__version__}:"
        f" {passed} passed, {skipped} skipped, {failed} known gap(s),"
        f" in {seconds / 60:.0f} minutes of model time on 2 shared CPU cores.",
        "",
        "`*`: no module returns the library's feature map itself (its blocks return tuples);"
        " the layer is the last one with the same grid whose changes follow the feature"
        " map's. *next to last*: the head reads only the class token of the last feature"
        " map, so its patch tokens get no gradient; the block before feeds the last"
        " attention. *corners*: brightening the top-left corner moved the layer's activations"
        " most in the grid's top-left quarter (*peak*), or, where a random network spreads"
        " any change over the grid, at least further up and left than brightening the"
        " bottom-right corner did (*direction*); *spread*: both changes centred alike (within"
        " 2% of the grid), which says nothing either way.",
        "",
        "A block's index depends on the model's depth. The timm and torchvision rows are the"
        " named models; the transformers rows are small configs of each class (the sweep's"
        " `tests/models/zoo.py`: ViT with 3 layers, so `vit.layers.1`, the block before the"
        " last). Your model's own default is `vit.layers.<num_hidden_layers - 2>`: a ViT"
        " config of 2 layers explains `vit.layers.0`. Do not copy a tag from this table: at"
        " fit start `GradCAMCallback` logs the layer it chose and the exact tags of the"
        " scalars you can monitor, and `callback.tags` holds them"
        " ([callback.md](callback.md#the-tags-to-monitor)).",
        "",
    ]
    for library, title in (
        ("timm", "timm (smallest model of each module)"),
        ("torchvision", "torchvision"),
        ("transformers", "Hugging Face transformers"),
    ):
        part = [r for r in rows if r["library"] == library]
        if part:
            text += [f"## {title}", "", *_table(part), ""]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("timm", "torchvision", "transformers"))
    parser.add_argument("--rows", help="a JSON-lines file of rows from an earlier run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "default-layers.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.rows:
        rows = [
            json.loads(line)
            for line in Path(args.rows).read_text().splitlines()
            if line.startswith("{")
        ]
        seconds = sum(r["seconds"] for r in rows)
    else:
        libraries = [args.only] if args.only else ["timm", "torchvision", "transformers"]
        rows = [row for library in libraries for row in _rows(library)]
        seconds = time.perf_counter() - start
    Path(args.out).write_text(write(rows, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

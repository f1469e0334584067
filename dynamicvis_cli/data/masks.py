"""Image/mask pairs for semantic segmentation, with class-index or colour (palette) masks.

Layout: any folder named ``images`` (at ``ROOT`` or below it, e.g. the Dubai set's
``Tile N/images``) with a sibling ``masks`` (or ``labels``, ``annotations``) folder holding a
mask of the same stem for each image, any extension. Masks are either one band of class indexes
(0..K-1, 255 ignored; palette-mode PNGs read as their indexes) or RGB colours mapped through a
palette: ``{class name: "#RRGGBB"}`` in class order, plus colours to ignore.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dynamicvis_cli.data.imagefolder import list_images
from dynamicvis_cli.data.io import check_label, image_header, label_header
from dynamicvis_cli.data.records import IMAGE_SUFFIXES, DatasetSpec, MaskCoding, Record
from dynamicvis_cli.errors import DatasetError

MASK_FOLDERS = ("masks", "labels", "annotations", "gt")


def parse_colour(text: str | Sequence[int], where: object = "palette") -> tuple[int, int, int]:
    """``"#3C1098"``, ``"3C1098"`` or ``[60, 16, 152]`` → (60, 16, 152)."""
    if isinstance(text, str):
        s = text.strip().lstrip("#")
        if len(s) != 6:
            raise DatasetError(where, f"colour '{text}' is not #RRGGBB")
        try:
            return int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
        except ValueError:
            raise DatasetError(where, f"colour '{text}' is not #RRGGBB") from None
    values = [int(v) for v in text]
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise DatasetError(where, f"colour {list(text)} is not three values 0..255")
    return values[0], values[1], values[2]


def read_palette(source: str | Path | Mapping[str, Any]) -> tuple[list[str], list[tuple[int, int, int]],
                                                                  list[tuple[int, int, int]]]:
    """Classes, their colours and ignored colours from a mapping or a JSON/YAML file.

    The mapping is ``{class: colour, ...}``; a key ``ignore`` (or ``_ignore``) lists colours to
    ignore. A file may also hold ``{"palette": {...}, "ignore_colours": [...]}``.
    """
    where: object = "palette"
    data: Any = source
    if not isinstance(source, Mapping):
        path = Path(source)
        where = path
        if not path.is_file():
            raise DatasetError(path, "palette file does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(path, f"palette is not valid JSON ({exc})") from exc
    if not isinstance(data, Mapping):
        raise DatasetError(where, "palette must map class names to colours")
    ignore = list(data.get("ignore_colours", data.get("ignore", data.get("_ignore", []))))
    table = data.get("palette", data)
    names, colours = [], []
    for name, colour in table.items():
        if name in ("ignore", "_ignore", "ignore_colours", "palette"):
            continue
        names.append(str(name))
        colours.append(parse_colour(colour, where))
    if not names:
        raise DatasetError(where, "palette lists no classes")
    return names, colours, [parse_colour(c, where) for c in ignore]


def find_pairs(root: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) for every image in an ``images`` folder at or below ``root``."""
    folders = [root / "images"] if (root / "images").is_dir() else []
    folders += sorted(p for p in root.rglob("images") if p.is_dir() and p != root / "images")
    pairs: list[tuple[Path, Path | None]] = []
    for images in folders:
        mask_dir = next((images.parent / m for m in MASK_FOLDERS if (images.parent / m).is_dir()), None)
        masks: dict[str, Path] = {}
        if mask_dir is not None:
            for p in sorted(mask_dir.iterdir()):
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                    masks.setdefault(p.stem, p)
        for img in list_images(images):
            pairs.append((img, masks.get(img.stem)))
    return pairs


def looks_like(root: Path) -> bool:
    """An ``images`` folder (at or below ``root``) with a mask folder beside it."""
    if not root.is_dir():
        return False
    folders = [root / "images"] if (root / "images").is_dir() else list(root.glob("*/images"))
    return any((f.parent / m).is_dir() for f in folders for m in MASK_FOLDERS)


def load_mask_pairs(root: Path, *, classes: Sequence[str] | None = None,
                    palette: str | Path | Mapping[str, Any] | None = None,
                    check_masks: bool = True) -> DatasetSpec:
    """Records of image/mask pairs under ``root``.

    Args:
        root: the dataset folder.
        classes: class names for class-index masks (index i = ``classes[i]``).
        palette: for colour masks (see :func:`read_palette`); gives the classes.
        check_masks: decode every mask up front, so an unknown colour or class index is reported
            before training starts.

    Raises:
        DatasetError: no images, an image without mask, sizes that differ, undecodable files,
            colours or indexes outside the class list (each names the file).
    """
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist")
    if palette is not None:
        names, colours, ignore = read_palette(palette)
        if classes and list(classes) != names:
            raise DatasetError(root, f"classes {list(classes)} differ from the palette's {names}")
        coding = MaskCoding("palette", len(names), colours, ignore)
    else:
        if not classes:
            raise DatasetError(root, "class-index masks need the class names (classes: [...]); "
                               "colour masks need a palette")
        names = list(classes)
        coding = MaskCoding("index", len(names))
    pairs = find_pairs(root)
    if not pairs:
        raise DatasetError(root, "no images found (expected an images/ folder with a masks/ folder "
                           "beside it)")
    records, bands = [], 0
    for img, mask in pairs:
        if mask is None:
            raise DatasetError(img, f"image has no mask (looked for {img.stem}.* in "
                               f"{' or '.join(str(img.parent.parent / m) for m in MASK_FOLDERS)})")
        w, h, count, _ = image_header(img)
        bands = bands or count
        mw, mh, mcount = label_header(mask)
        if (mw, mh) != (w, h):
            raise DatasetError(mask, f"mask is {mw}x{mh} px but its image {img.name} is {w}x{h}")
        if coding.kind == "palette" and mcount < 3:
            raise DatasetError(mask, f"a palette was given but the mask has {mcount} band(s), not RGB")
        if check_masks:
            check_label(mask, coding)
        records.append(Record(img, w, h, mask=mask, count=count))
    return DatasetSpec(root, "masks", "segment", names, records, coding=coding, bands=bands)

"""Georeferenced training data: scenes (GeoTIFFs) + vector labels (GeoPackage, GeoJSON, ...).

Described by a YAML file (``--data geo.yaml``) or by the run config's ``geo:`` section::

    scenes: [scenes/*.tif]        # rasters with a CRS (globs relative to the YAML's folder)
    labels: labels.gpkg           # any vector file GeoPandas reads; reprojected to each scene
    layer: null                   # layer of a multi-layer file
    class_column: class           # attribute naming each feature's class (name or 0-based index)
    chip_size: 512                # scenes are cut into chips of this side ...
    chip_stride: null             # ... every chip_stride px (default: chip_size)
    keep_empty: false             # keep chips without any label
    background: background        # segment: class of unlabelled pixels (null: ignore them)

Each chip becomes a record whose ``region`` is the chip; training samples its random windows
inside it. Labels are kept as geometries in the scene's pixel coordinates: boxes are their
bounds (detect), masks are rasterised per window (instance, segment; later features win).
"""

from __future__ import annotations

import glob
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from shapely import affinity
from shapely.geometry import box as shapely_box

from dynamicvis_cli.data.io import image_header
from dynamicvis_cli.data.records import DatasetSpec, Record
from dynamicvis_cli.errors import DatasetError

DEFAULTS: dict[str, Any] = {"scenes": None, "labels": None, "layer": None, "class_column": "class",
                            "chip_size": 512, "chip_stride": None, "keep_empty": False,
                            "background": "background"}


def _options(path: Path, options: Mapping[str, Any] | None) -> tuple[dict[str, Any], Path]:
    opts = dict(DEFAULTS)
    base = path.parent if path.is_file() else path
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, Mapping):
            raise DatasetError(path, "a geo dataset file holds a mapping (scenes, labels, class_column, ...)")
        opts.update(data)
    elif path.exists():  # a raster or a folder of rasters given as --data
        opts["scenes"] = [str(path)] if path.is_file() else [str(path / "*.tif"), str(path / "*.tiff")]
    opts.update({k: v for k, v in (options or {}).items() if v is not None})
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise DatasetError(path, f"unknown geo dataset keys: {', '.join(sorted(unknown))} "
                           f"(known: {', '.join(DEFAULTS)})")
    return opts, base


def _scenes(spec: Any, base: Path, where: Path) -> list[Path]:
    items = [spec] if isinstance(spec, str) else list(spec or [])
    found: list[Path] = []
    for item in items:
        pattern = str(item) if Path(str(item)).is_absolute() else str(base / str(item))
        matches = sorted(glob.glob(pattern))
        if not matches and not any(c in str(item) for c in "*?["):
            raise DatasetError(pattern, "scene does not exist")
        found.extend(Path(m) for m in matches)
    if not found:
        raise DatasetError(where, "no scenes found (scenes: list of rasters or globs)")
    return found


def load_geo(path: str | Path, *, task: str, classes: Sequence[str] | None = None,
             options: Mapping[str, Any] | None = None) -> DatasetSpec:
    """Records of chips of georeferenced scenes labelled by a vector file.

    Raises:
        DatasetError: missing scenes or labels, a scene without CRS, a missing class column, a
            class outside the class list, labels that fall on no scene (each names the file).
    """
    import geopandas as gpd
    from pyogrio.errors import DataSourceError

    path = Path(path)
    opts, base = _options(path, options)
    if not opts["labels"]:
        raise DatasetError(path, "geo dataset without labels (labels: a GeoPackage/GeoJSON file)")
    labels_path = Path(str(opts["labels"]))
    labels_path = labels_path if labels_path.is_absolute() else base / labels_path
    if not labels_path.exists():
        raise DatasetError(labels_path, "label file does not exist")
    try:
        gdf = gpd.read_file(labels_path, layer=opts["layer"]) if opts["layer"] else gpd.read_file(labels_path)
    except (DataSourceError, OSError, ValueError) as exc:
        raise DatasetError(labels_path, f"labels cannot be read ({str(exc).splitlines()[0]})") from exc
    column = str(opts["class_column"])
    if column not in gdf.columns:
        raise DatasetError(labels_path, f"no class column '{column}' (columns: "
                           f"{', '.join(c for c in gdf.columns if c != 'geometry')}); set class_column")
    if gdf.crs is None:
        raise DatasetError(labels_path, "labels have no CRS")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    polygons = gdf.geom_type.isin(["Polygon", "MultiPolygon"])
    if task in ("detect", "instance", "segment") and not polygons.all():
        odd = sorted(set(gdf.geom_type) - {"Polygon", "MultiPolygon"})
        raise DatasetError(labels_path, f"labels must be polygons for {task}; found {', '.join(odd)}")
    values = gdf[column].tolist()
    background = opts["background"] if task == "segment" else None
    if classes:
        names = list(classes)
    else:
        uniq = sorted({v for v in values}, key=lambda v: (isinstance(v, str), v))
        names = [str(v) for v in uniq] if all(isinstance(v, str) for v in uniq) else []
        if not names:
            raise DatasetError(labels_path, f"class column '{column}' holds numbers: give the class names "
                               "(classes)")
        if background and background not in names:
            names = [str(background), *names]
    index = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            if v not in names:
                raise DatasetError(labels_path, f"feature {i}: class '{v}' is not in the class list {names}")
            index.append(names.index(v))
        else:
            k = int(v)
            if not 0 <= k < len(names):
                raise DatasetError(labels_path, f"feature {i}: class index {k} outside the class list "
                                   f"(0..{len(names) - 1})")
            index.append(k)
    gdf = gdf.assign(_class=index)

    size = int(opts["chip_size"])
    stride = int(opts["chip_stride"] or size)
    records: list[Record] = []
    bands = 0
    for scene in _scenes(opts["scenes"], base, path):
        w, h, count, _ = image_header(scene)
        bands = bands or count
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(scene) as ds:
                crs, transform = ds.crs, ds.transform
        if crs is None:
            raise DatasetError(scene, "scene has no CRS; georeferenced training needs one")
        local = gdf.to_crs(crs)
        inv = ~transform
        pixel = [affinity.affine_transform(g, [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff])
                 for g in local.geometry]
        cls = local["_class"].to_numpy()
        for r in range(0, max(1, h - size + stride), stride):
            for c in range(0, max(1, w - size + stride), stride):
                chip = shapely_box(c, r, c + size, r + size)
                hit = [j for j, g in enumerate(pixel) if g.intersects(chip)]
                if not hit and not opts["keep_empty"]:
                    continue
                geoms = [pixel[j] for j in hit]
                bounds = np.array([g.bounds for g in geoms], dtype=np.float64).reshape(-1, 4)
                records.append(Record(scene, w, h, boxes=bounds, labels=cls[hit].astype(np.int64),
                                      shapes=list(geoms), region=(c, r, size, size), count=count))
    if not records:
        raise DatasetError(labels_path, "no labels fall on the scenes (check the CRS and extents) "
                           "or every chip is empty")
    spec = DatasetSpec(path, "geo", task, names, records, bands=bands)
    if task == "segment":
        from dynamicvis_cli.data.records import MaskCoding

        spec.coding = MaskCoding("index", len(names))
        spec.background = names.index(str(background)) if background else None
    return spec

"""Training and evaluation datasets in the formats people already have, as one sample schema.

Formats (each a module): ImageFolder (:mod:`.imagefolder`), image/mask pairs with class-index or
colour masks (:mod:`.masks`), A/B/label change pairs (:mod:`.changepairs`), COCO JSON
(:mod:`.coco`), YOLO txt (:mod:`.yolo`), NWPU VHR-10 txt (:mod:`.nwpu`), Pascal VOC xml and DOTA
txt (:mod:`.vocdota`) and georeferenced scenes with vector labels (:mod:`.geovector`).
:func:`dynamicvis_cli.data.discover.open_dataset` finds the format of a folder and returns a
:class:`~dynamicvis_cli.data.records.DatasetSpec`: records (paths and annotations, no pixels)
checked up front. :mod:`.dataset` turns records into tensors
through :mod:`.augment`, normalising exactly as inference does; :mod:`.convert` rewrites labels
in another format.

Nothing here imports the CLI; torch enters only in :mod:`.dataset`.
"""

"""Evaluation of task models on labelled data (``dvis evaluate``).

:mod:`.coco` is COCO-style box and mask AP (a numpy re-implementation of pycocotools' COCOeval,
used because neither pycocotools nor torchmetrics is a dependency); :mod:`.tasks` runs a task
checkpoint over a dataset read by :mod:`dynamicvis_cli.data` and returns the task's metrics.
"""

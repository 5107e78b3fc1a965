"""Point-cloud modality of MAP: ops, readers, transforms, tokeniser, PointMAP models and tasks, the
few-shot protocol, and what the tools need (``modality.py``)."""
from pointcloud import data  # noqa: F401  (registers the datasets)
from pointcloud import models  # noqa: F401  (registers pointmap_pretrain, pointmap_classifier)
from pointcloud import partseg  # noqa: F401  (registers pointmap_partseg)
from pointcloud import tasks  # noqa: F401  (registers the point-cloud tasks)
from pointcloud import fewshot  # noqa: F401  (registers the fewshot: config section)
from pointcloud import modality  # noqa: F401  (registers the modality: example input, visualiser)

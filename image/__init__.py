"""Image modality of MAP: patch tokeniser, pretraining models, classifier, ImageNet reader,
the multi-scale adapter and the dense tasks (ADE20K segmentation, COCO detection) with their
readers, official-checkpoint conversion, pictures. Importing the package registers its models,
datasets, tasks and the modality (``modality.py``: what the tools need)."""
from . import (adapter, classifier, convert, data, dense_data, detection, modality, models,  # noqa: F401
               segmentation, tokenizer)
from .classifier import MAPClassifier, get_cls_idx, map_classifier
from .convert import from_official, to_official
from .models import MAPImagePretrainer, map_pretrain
from .tokenizer import ImagePatchTokenizer, patchify, unpatchify

__all__ = [
    "ImagePatchTokenizer", "MAPClassifier", "MAPImagePretrainer", "from_official", "get_cls_idx",
    "map_classifier", "map_pretrain", "patchify", "to_official", "unpatchify",
]

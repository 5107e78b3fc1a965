"""Image modality of MAP: patch tokeniser, pretraining models, classifier, ImageNet reader,
official-checkpoint conversion. Importing the package registers its models and datasets."""
from . import classifier, convert, data, models, tokenizer  # noqa: F401  (registration)
from .classifier import MAPClassifier, get_cls_idx, map_classifier
from .convert import from_official, to_official
from .models import MAPImagePretrainer, map_pretrain
from .tokenizer import ImagePatchTokenizer, patchify, unpatchify

__all__ = [
    "ImagePatchTokenizer", "MAPClassifier", "MAPImagePretrainer", "from_official", "get_cls_idx",
    "map_classifier", "map_pretrain", "patchify", "to_official", "unpatchify",
]

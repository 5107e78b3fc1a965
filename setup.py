"""MAP: Masked Autoregressive Pretraining for hybrid Mamba-Transformer backbones (2D and 3D)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="map-pretraining",
    version="0.1.0",
    description="Masked Autoregressive Pretraining (MAP) for hybrid Mamba-Transformer vision "
    "backbones: images and point clouds, pure PyTorch with optional fast paths.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["map_core*", "image*", "pointcloud*"]),
    install_requires=[
        "torch>=2.3",
        "torchvision>=0.18",  # DatasetFolder's allow_empty (image.data)
        "timm>=1.0.26",  # ViT Block with attn_mask, bool masks on both attention paths (map_core.layers)
        "einops>=0.7",
        "numpy",
        "pyyaml",
        "h5py",
        "tqdm",
        "tensorboard",
        "scikit-learn",
        "matplotlib",
        "pillow",
        "torchmetrics>=1.0",  # the segmentation confusion matrix (image.segmentation)
        "pycocotools>=2.0",  # COCO reader and box / mask AP (image.dense_data, image.detection; imported when used)
    ],
    extras_require={
        "vis": ["open3d"],
        "test": ["pytest"],
        "fast": ["mamba-ssm", "causal-conv1d"],
    },
)

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
    packages=find_packages(include=["map_core*", "image*", "pointcloud*"]) + ["map_tools"],
    package_dir={"map_tools": "tools"},  # tools/*.py, importable as map_tools.* once installed
    install_requires=[
        "torch>=2.5",  # map_core.TORCH_APIS: nn.RMSNorm, torch.library.custom_op, serialization.safe_globals
        "torchvision>=0.18",  # DatasetFolder's allow_empty (image.data)
        "timm>=1.0.26",  # ViT Block with attn_mask, bool masks on both attention paths (map_core.layers)
        "torchmetrics>=1.0",  # MulticlassStatScores with top_k, SumMetric (map_core.engine.tasks)
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
    entry_points={
        "console_scripts": [
            "map-train = map_tools.train:main",
            "map-demo = map_tools.demo:main",
            "map-visualize = map_tools.visualize:main",
            "map-benchmark = map_tools.benchmark:main",
            "map-benchmark-kernels = map_tools.benchmark_kernels:main",
            "map-ablate = map_tools.ablate:main",
            "map-diagnose = map_tools.diagnose:main",
        ],
    },
)

"""The synthetic speed-run data are read by the real readers, at the real sizes."""
from pathlib import Path

from PIL import Image

from tools.demo import load_demo_builder

build_speed_data = load_demo_builder("speed_data").build_speed_data


def test_speed_data_has_the_real_layouts_and_sizes(tmp_path):
    from image.data import ImageNet
    from pointcloud.data.shapenet import ShapeNet

    out = build_speed_data(tmp_path, images=6, val_images=2, clouds=10, workers=1)
    train = ImageNet(str(out / "imagenet"), "train", transform="pretrain")
    assert len(train) == 6 and train[0][0].shape == (3, 224, 224)
    first = Path(train.samples[0][0])
    assert Image.open(first).size == (500, 375) and first.stat().st_size > 30_000  # photo-like, not flat
    shapes = ShapeNet(str(out / "ShapeNet55-34/ShapeNet-55"), str(out / "ShapeNet55-34/shapenet_pc"), "train",
                      npoints=1024)
    assert len(shapes) == 9 and shapes[0][0].shape == (1024, 3)

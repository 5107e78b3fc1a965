"""The demo pipeline end to end on a sliver of the bundled digits (the real run is `make demo`)."""
import pytest

from tools import demo


@pytest.mark.slow
def test_demo_quick(tmp_path):
    exp = tmp_path / "exp"
    assert demo.main(["--quick", "--limit-per-class", "4", "--data", str(tmp_path / "data"),
                      "--exp-root", str(exp)]) == 0
    table = (exp / "results.md").read_text()
    assert "| point cloud (PointMAP) |" in table and "| image (MAP) |" in table
    for picture in ("reconstruction_pointmap.png", "reconstruction_image.png"):
        assert (exp / picture).stat().st_size > 1000
    for name in ("pointmap_finetune", "image_finetune"):
        for run in ("from_pretrained", "from_scratch"):
            assert (exp / name / run / "last.pth").exists()
        log = (exp / name / "from_pretrained" / "log.txt").read_text()
        assert "pretrain" in log  # the finetune run loaded the pretraining checkpoint

"""The demo pipeline end to end on a sliver of the bundled digits (the real run is `make demo`)."""
import pytest

from tools import demo


@pytest.mark.slow
def test_demo_quick(tmp_path):
    exp = tmp_path / "exp"
    assert demo.main(["--quick", "--limit-per-class", "4", "--data", str(tmp_path / "data"),
                      "--shapes-data", str(tmp_path / "shapes"),
                      "--exp-root", str(exp)]) == 0
    table = (exp / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[:2] for row in rows] == [["| image (MAP)", "linear SVM on frozen features"],
                                                       ["| image (MAP)", "finetune, 20 labels per class"],
                                                       ["| point cloud (PointMAP)", "linear SVM on frozen features"]]
    for picture in ("reconstruction_shapes.png", "reconstruction_image.png"):
        assert (exp / picture).stat().st_size > 1000
    assert (exp / "image_finetune" / "pretrained" / "last.pth").exists()
    for name in ("image_svm", "image_finetune", "shapes_svm"):
        for run in ("pretrained", "random_init"):
            log = (exp / name / run / "log.txt").read_text()
            assert ("loaded pretrained weights" in log) == (run == "pretrained")

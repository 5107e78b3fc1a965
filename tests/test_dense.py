"""Dense 2D tasks: readers on tiny files in the ADE20K and COCO layouts (and their errors), the
adapter's taps, pyramid and heads, sliding windows, the confusion-matrix metrics, COCO AP, layer
decay, and one finetuning step of each task through tools/train.py."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn as nn
from PIL import Image

from image.adapter import SimpleFeaturePyramid
from image.convert import to_official
from image.dense_data import ADE20K, COCODetection, rescale_size
from image.detection import coco_evaluate, coco_results, map_maskrcnn, paste_masks
from image.models import map_pretrain
from image.segmentation import map_upernet, segmentation_metrics, slide_inference, sliding_windows
from map_core.encoder import HybridEncoder
from map_core.engine.optim import OptimizerConfig, build_optimizer
from map_core.errors import DataError

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

TINY = dict(patch_size=8, embed_dim=32, depth=3, num_heads=4, drop_path_rate=0.0)  # layout MMMT


def _scenes_module():
    spec = importlib.util.spec_from_file_location(
        "digit_scenes", Path(__file__).resolve().parents[1] / "datasets" / "digit_scenes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- ADE20K
def _ade(root: Path, labels: dict, split: str = "training") -> Path:
    for name, label in labels.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        rgb = np.random.default_rng(0).integers(0, 255, (*label.shape[:2], 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / split / f"{name}.jpg")
        Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
    return root


def test_ade20k_reader_labels_and_sizes(tmp_path):
    label = np.zeros((30, 40), np.uint8)
    label[:, 10:20], label[:, 20:] = 1, 150
    root = _ade(tmp_path / "ADEChallengeData2016", {"ADE_val_1": label}, "validation")
    val = ADE20K(root=str(root), split="validation", transform="eval", scale=(80, 60))
    img, target = val[0]
    assert img.shape == (3, 60, 80) and target.shape == (30, 40)  # label kept at the original size
    assert target[0, 0] == 255 and target[0, 15] == 0 and target[0, 25] == 149  # 0 ignored, shifted down
    torch.manual_seed(0)
    train = ADE20K(root=str(root), split="validation", transform="train", scale=(80, 60), crop_size=32)
    img, target = train[0]
    assert img.shape == (3, 32, 32) and target.shape == (32, 32)
    assert set(target.unique().tolist()) <= {0, 149, 255}
    assert rescale_size(640, 480, (2048, 512)) == (683, 512) and rescale_size(300, 1000, (100, 50)) == (30, 100)


def test_ade20k_reader_errors(tmp_path):
    with pytest.raises(DataError, match="ADE20K root folder .*nope"):
        ADE20K(root=str(tmp_path / "nope"))
    root = _ade(tmp_path / "a", {"x": np.ones((8, 8), np.uint8), "y": np.full((8, 8), 151, np.uint8)})
    (root / "images" / "training" / "lonely.jpg").write_bytes((root / "images" / "training" / "x.jpg").read_bytes())
    with pytest.raises(DataError, match="lonely.jpg' has no annotation"):
        ADE20K(root=str(root))
    (root / "images" / "training" / "lonely.jpg").unlink()
    data = ADE20K(root=str(root), crop_size=8)
    with pytest.raises(DataError, match=r"y.png' holds label 151, above the 150 classes"):
        data[1]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "annotations" / "training" / "x.png")
    with pytest.raises(DataError, match="x.png': expected a one-channel label image"):
        data[0]
    with pytest.raises(DataError, match="split 'train'"):
        ADE20K(root=str(root), split="train")


# ----------------------------------------------------------------------------- COCO
def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def _coco(root: Path, split: str = "val2017") -> Path:
    """3 images (40x32); categories 3, 7, 90 (gaps, as COCO's ids)."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 32} for i in (1, 2, 5)]
    for info in images:
        Image.fromarray(np.full((32, 40, 3), 40 * info["id"], np.uint8)).save(root / split / info["file_name"])
    anns = [  # image 1: two objects and a crowd; image 2: a box under a pixel high only; image 5: none
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": _square(2, 2, 10)},
        {"id": 2, "image_id": 1, "category_id": 90, "bbox": [20, 10, 12, 12], "area": 144, "iscrowd": 0,
         "segmentation": _square(20, 10, 12)},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 20, 8, 8], "area": 64, "iscrowd": 1,
         "segmentation": _square(0, 20, 8)},
        {"id": 4, "image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 0.5], "area": 5, "iscrowd": 0,
         "segmentation": [[5, 5, 15, 5, 15, 5.5, 5, 5.5]]},
    ]
    categories = [{"id": c, "name": f"c{c}"} for c in (3, 7, 90)]
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def test_coco_reader_targets_and_filtering(tmp_path):
    _coco(tmp_path)
    val = COCODetection(root=str(tmp_path), split="val2017", transform="eval", num_classes=3)
    assert val.label_to_category == {1: 3, 2: 7, 3: 90} and len(val) == 3
    img, target = val[0]
    assert img.shape == (3, 32, 40) and img.dtype == torch.float32 and img.max() <= 1.0
    assert target["labels"].tolist() == [1, 3]  # the crowd region is left out
    assert target["boxes"].tolist() == [[2, 2, 12, 12], [20, 10, 32, 22]]
    assert target["masks"].shape == (2, 32, 40) and target["image_id"] == 1
    assert target["masks"][0, 5, 5] == 1 and target["masks"][0, 20, 25] == 0 and target["masks"][1, 15, 25] == 1
    torch.manual_seed(0)
    train = COCODetection(root=str(tmp_path), split="val2017", transform="train", num_classes=3, image_size=48,
                          scale_range=(1.0, 1.0))
    assert train.ids == [1]  # image 2 has only a box under a pixel high, image 5 none
    img, target = train[0]
    assert img.shape == (3, 48, 48) and target["masks"].shape[1:] == (48, 48)
    assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"])


def test_coco_reader_errors(tmp_path):
    with pytest.raises(DataError, match="COCO root folder"):
        COCODetection(root=str(tmp_path / "nope"), split="val2017")
    path = _coco(tmp_path)
    with pytest.raises(DataError, match="has 3 categories, task.num_classes is 80"):
        COCODetection(root=str(tmp_path), split="val2017")
    with pytest.raises(DataError, match="instances_train2017.json' does not exist"):
        (tmp_path / "train2017").mkdir()
        COCODetection(root=str(tmp_path), split="train2017", num_classes=3)
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation 1 names image 99"):
        COCODetection(root=str(tmp_path), split="val2017", num_classes=3)
    data["annotations"][0]["image_id"] = 1
    data["images"][0]["width"] = 41
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="000000000001.jpg' is 40x32, .* says 41x32"):
        COCODetection(root=str(tmp_path), split="val2017", transform="eval", num_classes=3)[0]


def test_coco_ap_equals_pycocotools(tmp_path):
    """Detections through coco_results / coco_evaluate give pycocotools' own numbers on the same
    records, and the ground truth itself scores AP 100."""
    path = _coco(tmp_path)
    val = COCODetection(root=str(tmp_path), split="val2017", transform="eval", num_classes=3)
    masks = torch.zeros(3, 1, 32, 40)
    masks[0, 0, 2:12, 2:12], masks[1, 0, 12:22, 20:30], masks[2, 0, 0:10, 25:35] = 0.9, 0.8, 0.7
    outputs = [{"boxes": torch.tensor([[2., 2, 12, 12], [20, 12, 30, 22], [25, 0, 35, 10]]),
                "labels": torch.tensor([1, 3, 2]), "scores": torch.tensor([0.9, 0.8, 0.3]), "masks": masks}]
    results = coco_results(outputs, [1], val.label_to_category)
    assert [r["category_id"] for r in results] == [3, 90, 7] and results[1]["bbox"] == [20, 12, 10, 10]
    ours = coco_evaluate(val.coco, results, [1, 2, 5])
    gt = COCO(str(path))
    for iou_type in ("bbox", "segm"):
        evaluator = COCOeval(gt, gt.loadRes(json.loads(json.dumps(results))), iou_type)
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
        assert ours[f"{iou_type}_ap"] == pytest.approx(100 * evaluator.stats[0])
        assert ours[f"{iou_type}_ap50"] == pytest.approx(100 * evaluator.stats[1])
    assert 0 < ours["bbox_ap"] < 100
    _, target = val[0]
    perfect = [{"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(2),
                "masks": target["masks"][:, None].float()}]
    perfect = coco_results(perfect, [1], val.label_to_category)
    scores = coco_evaluate(val.coco, perfect, [1])  # image 1 only: its crowd region is not a miss
    assert scores["bbox_ap"] == pytest.approx(100) and scores["segm_ap"] == pytest.approx(100)
    assert coco_evaluate(val.coco, perfect, [1, 2, 5])["bbox_ap"] == pytest.approx(100 * 2 / 3)  # image 2's
    # box under a pixel high is no training target, but it is a ground truth: category 7 scores 0
    assert math.isnan(scores["bbox_ap_large"])  # no large object: NaN, as detectron2 reports it


# ----------------------------------------------------------------------------- metrics, windows
def test_confusion_matrix_metrics_by_hand():
    from torchmetrics.classification import MulticlassJaccardIndex

    jaccard = MulticlassJaccardIndex(4, ignore_index=255)
    # two batches: the metric is over the whole split (not a mean of per-batch values)
    jaccard.update(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    jaccard.update(torch.tensor([0, 2, 3]), torch.tensor([2, 255, 1]))
    m = segmentation_metrics(jaccard.confmat)
    # truth / predicted / hits per class: 0: 2/2/1, 1: 3/3/2, 2: 1/0/0, 3: 0/1/0 (the 255 pixel left out)
    assert m["miou"] == pytest.approx(100 * (1 / 3 + 2 / 4 + 0 + 0) / 4)
    assert m["macc"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 0) / 3)  # class 3 is in no truth: no accuracy
    assert m["aacc"] == pytest.approx(100 * 3 / 6)
    assert segmentation_metrics(torch.tensor([[5, 0, 0], [0, 0, 0], [1, 0, 2]]))["miou"] == pytest.approx(
        100 * (5 / 6 + 2 / 3) / 2)  # class 1 absent from truth and prediction: left out of the mean


def test_sliding_windows_and_inference():
    assert sliding_windows(512, 683, 512, 341) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert sliding_windows(300, 200, 512, 341) == [(0, 300, 0, 200)]
    assert len(sliding_windows(1024, 2048, 512, 341)) == 3 * 6
    torch.manual_seed(0)
    model = map_upernet(img_size=32, num_classes=5, channels=16, aux_channels=8, **TINY).eval()
    img = torch.randn(1, 3, 48, 40)
    with torch.no_grad():  # one window covers the image: the same as whole-image inference
        assert torch.allclose(slide_inference(model, img, 64, 32), model(img))
    conv = nn.Conv2d(3, 4, 1)  # a per-pixel model: overlapping windows average to the whole image too
    imgs = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        assert torch.allclose(slide_inference(conv, imgs, 32, 21), conv(imgs), atol=1e-6)


# ----------------------------------------------------------------------------- adapter, heads
def test_taps_are_the_states_of_a_shorter_encoder():
    torch.manual_seed(0)
    full = HybridEncoder(16, "MMMT*2", num_heads=2).eval()
    short = HybridEncoder(16, "MM", num_heads=2).eval()
    short.load_state_dict({k: v for k, v in full.state_dict().items() if k in short.state_dict()})
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        taps = full(x, return_layers=[1, 7])
        assert torch.allclose(taps[0], short(x), atol=1e-6) and torch.allclose(taps[1], full(x), atol=1e-6)


def test_pyramid_and_head_shapes():
    maps = [torch.randn(2, 32, 4, 6) for _ in range(4)]
    beit = SimpleFeaturePyramid(32, "beit")
    assert [tuple(x.shape) for x in beit(maps)] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    vitdet = SimpleFeaturePyramid(32, "vitdet", "layer", out_channels=8, extra_level=True)
    assert [tuple(x.shape) for x in vitdet(maps[:1])] == [(2, 8, 16, 24), (2, 8, 8, 12), (2, 8, 4, 6), (2, 8, 2, 3),
                                                          (2, 8, 1, 2)]
    with pytest.raises(ValueError, match="takes 1 maps, got 4"):
        vitdet(maps)
    torch.manual_seed(0)
    seg = map_upernet(img_size=32, num_classes=5, channels=16, aux_channels=8, **TINY)
    logits, aux = seg(torch.randn(2, 3, 50, 70), with_aux=True)  # padded to 64x80 inside, cropped back
    assert logits.shape == aux.shape == (2, 5, 50, 70)
    assert [tuple(x.shape) for x in seg.features(torch.randn(1, 3, 50, 70))] == [
        (1, 32, 32, 40), (1, 32, 16, 20), (1, 32, 8, 10), (1, 32, 4, 5)]
    det = map_maskrcnn(img_size=64, num_classes=3, fpn_channels=16, representation_size=32, **TINY).eval()
    with torch.no_grad():
        out = det([torch.rand(3, 40, 56)])[0]
    assert out["boxes"].shape[1] == 4 and out["masks"].shape[1:] == (1, 40, 56)
    assert len(out["boxes"]) <= 100  # detections_per_img


def test_paste_masks_is_grid_sampling_over_each_box():
    """Against F.grid_sample with a grid spanning each box (detectron2's paste), and close to
    torchvision's paste (which rounds boxes to whole pixels) once thresholded."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    torch.manual_seed(0)
    height, width, n = 120, 160, 6
    masks = torch.rand(n, 1, 28, 28) ** 3
    masks[:, :, 6:22, 6:22] = 0.9 + 0.1 * torch.rand(n, 1, 16, 16)  # a solid core, as trained heads give
    x1, y1 = torch.rand(n) * 120 - 10, torch.rand(n) * 80 - 10  # some boxes cross the image's edges
    boxes = torch.stack([x1, y1, x1 + 40 + torch.rand(n) * 40, y1 + 40 + torch.rand(n) * 40], 1)
    pasted = paste_masks(masks, boxes, (height, width))
    assert pasted.shape == (n, 1, height, width)
    for k in range(n):
        x0, y0, x1_, y1_ = boxes[k].tolist()
        gx = (torch.arange(width) + 0.5 - x0) / (x1_ - x0) * 2 - 1
        gy = (torch.arange(height) + 0.5 - y0) / (y1_ - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]  # (1, H, W, 2): x, y
        want = F.grid_sample(masks[k:k + 1], grid, align_corners=False, padding_mode="zeros")
        torch.testing.assert_close(pasted[k:k + 1], want, atol=1e-5, rtol=1e-5)
    theirs = paste_masks_in_image(masks, boxes, (height, width)) > 0.5
    ours = pasted > 0.5
    iou = (ours & theirs).flatten(1).sum(1) / (ours | theirs).flatten(1).sum(1)
    assert iou.min() > 0.85, iou  # a pixel or so apart at the edges
    assert paste_masks(masks[:0], boxes[:0], (height, width)).shape == (0, 1, height, width)


def test_detector_sampling_sizes_reach_the_rpn_and_the_box_head():
    det = map_maskrcnn(img_size=64, num_classes=3, fpn_channels=16, representation_size=32,
                       proposals_per_img=50, rois_per_img=24, **TINY).train()
    assert det.rpn._pre_nms_top_n == dict(training=100, testing=50)
    assert det.rpn._post_nms_top_n == dict(training=50, testing=50)
    assert det.roi_heads.fg_bg_sampler.batch_size_per_image == 24
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [dict(boxes=torch.tensor([[4.0, 4.0, 30.0, 30.0]]), labels=torch.tensor([1]),
                    masks=torch.zeros(1, 64, 64, dtype=torch.uint8)) for _ in range(2)]
    sampled = []
    det.roi_heads.box_roi_pool.register_forward_hook(lambda m, args, out: sampled.append(out.shape[0]))
    det(images, targets)
    assert sampled == [2 * 24]  # 24 RoIs per image (the ground truth box is among the proposals)


def test_layer_decay_rates():
    model = map_upernet(img_size=32, num_classes=5, channels=16, aux_channels=8, **TINY)
    assert model.encoder.layout == "MMMT"
    decay = 0.5
    optimizer = build_optimizer(model, OptimizerConfig(lr=1.0, layer_decay=decay), total_batch_size=1)
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    depth = {"tokenizer.": 0, "encoder.layers.0.": 1, "encoder.layers.1.": 2, "encoder.layers.2.": 3,
             "encoder.blocks.0.": 4}  # anything else (final norm, pyramid, heads): 5, the full lr
    for name, param in model.named_parameters():
        group = next((d for prefix, d in depth.items() if name.startswith(prefix)), 5)
        assert scale[id(param)] == pytest.approx(decay ** (5 - group)), name


def test_finetune_weights_from_a_pretraining_checkpoint():
    torch.manual_seed(0)
    pre = map_pretrain(img_size=32, decoder_dim=16, decoder_depth=1, decoder_heads=2, **TINY)
    seg = map_upernet(img_size=64, num_classes=5, channels=16, aux_channels=8, **TINY)
    result = seg.load_pretrained({"model": pre.state_dict()})
    assert not any(k.startswith(("tokenizer.", "encoder.")) for k in result.missing_keys)
    assert any(k.startswith("decoder") for k in result.skipped_keys) and not result.unexpected_keys
    assert seg.tokenizer.pos_embed.shape[1] == 64  # 4x4 table resized to 8x8
    assert torch.equal(seg.encoder.layers[2].mixer.A_log, pre.encoder.layers[2].mixer.A_log)
    other = map_upernet(img_size=64, num_classes=5, channels=16, aux_channels=8, **TINY)
    assert not other.load_pretrained(seg.state_dict()).missing_keys  # its own checkpoint: whole
    official = map_maskrcnn(img_size=64, num_classes=3, fpn_channels=16, representation_size=32, **TINY)
    official.load_pretrained({"model": to_official(pre.state_dict())})  # the release's names
    assert torch.equal(official.encoder.blocks[0].attn.qkv.weight, pre.encoder.blocks[0].attn.qkv.weight)


# ----------------------------------------------------------------------------- digit scenes
def test_digit_scenes_in_both_layouts(tmp_path):
    from sklearn.datasets import load_digits

    scenes = _scenes_module()
    digits = load_digits()
    counts = scenes.write_digit_scenes(tmp_path, digits.images, digits.target,
                                       {"train": np.arange(12), "test": np.arange(12, 20)}, seed=0)
    assert counts["train"] >= 4 and counts["test"] >= 3
    roots = scenes.scene_paths(tmp_path)
    coco = COCODetection(root=str(roots["coco"]), split="val2017", transform="eval", num_classes=10)
    ade = ADE20K(root=str(roots["ade20k"]), split="validation", transform="eval", num_classes=11, scale=(128, 64))
    assert len(coco) == len(ade) == counts["test"]
    placed = 0
    for i in range(len(coco)):
        _, target = coco[i]
        _, label = ade[i]
        for mask, category in zip(target["masks"].bool(), target["labels"]):
            assert (label[mask] == category).all()  # digit c: COCO category c + 1, ADE20K class c + 1
        assert ((label > 0) & (label < 255)).sum() == target["masks"].sum()  # digit pixels are instance pixels
        placed += len(target["labels"])
    assert placed >= 6  # of the 8 test digits, few if any left out for want of room


# ----------------------------------------------------------------------------- through tools/train.py
def _task_config(path: Path, task: str, roots: dict) -> Path:
    if task == "seg":
        model = dict(TINY, NAME="map_upernet", img_size=64, channels=16, aux_channels=8)
        task_cfg = {"NAME": "semantic_segmentation", "num_classes": 11}
        common = dict(NAME="ADE20K", root=str(roots["ade20k"]), scale=[128, 64], crop_size=64)
        data = {"train": dict(common, split="training"), "val": dict(common, split="validation", transform="eval")}
        scheduler = {"NAME": "poly", "iterations": 1, "warmup_iterations": 0}
    else:
        model = dict(TINY, NAME="map_maskrcnn", img_size=64, fpn_channels=16, representation_size=32)
        task_cfg = {"NAME": "detection", "num_classes": 10}
        common = dict(NAME="COCO", root=str(roots["coco"]))
        data = {"train": dict(common, split="train2017", image_size=64, scale_range=[0.8, 1.2]),
                "val": dict(common, split="val2017", transform="eval")}
        scheduler = {"NAME": "step", "iterations": 2, "warmup_iterations": 1, "milestones": [1]}
    cfg = {"task": task_cfg, "model": model, "dataset": data, "scheduler": scheduler,
           "optimizer": {"NAME": "adamw", "lr": 1.0e-3, "layer_decay": 0.75},
           "train": {"total_batch_size": 2, "val_batch_size": 4, "num_workers": 0, "precision": "fp32",
                     "log_every": 1},
           "runtime": {"device": "cpu"}}
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_finetune_step_of_each_task(tmp_path, capsys):
    from sklearn.datasets import load_digits

    from tools.train import main
    from tools.visualize import main as visualize

    digits = load_digits()
    scenes = _scenes_module()
    scenes.write_digit_scenes(tmp_path / "scenes", digits.images, digits.target,
                              {"train": np.arange(8), "test": np.arange(8, 12)}, seed=0)
    roots = scenes.scene_paths(tmp_path / "scenes")
    pre = tmp_path / "pre.pth"
    torch.save({"model": map_pretrain(img_size=32, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                                      **TINY).state_dict()}, pre)
    for task, metric in (("seg", "miou"), ("det", "bbox_ap")):
        cfg = _task_config(tmp_path / f"{task}.yaml", task, roots)
        capsys.readouterr()
        assert main(["--config", str(cfg), "--exp-root", str(tmp_path / "exp"), "--finetune", str(pre)]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["metric"] == metric and 0.0 <= result["best_metric"] <= 100.0
        run = tmp_path / "exp" / task / "default"
        log_text = (run / "log.txt").read_text()
        assert "(encoder: 64 of 64)" in log_text  # every encoder tensor from the pretraining checkpoint
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert max(r["step"] for r in steps if r["type"] == "train") == (1 if task == "seg" else 2)
        assert visualize(["--ckpt", str(run), "--out", str(tmp_path / f"{task}.png"), "--num", "2"]) == 0
        assert (tmp_path / f"{task}.png").stat().st_size > 0

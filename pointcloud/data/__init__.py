"""Point-cloud readers (registered in ``map_core.registry.DATASETS``) and batch transforms."""
from pointcloud.data.common import DataError
from pointcloud.data.fewshot import ModelNetFewShot
from pointcloud.data.modelnet import ModelNet
from pointcloud.data.scanobjectnn import ScanObjectNN
from pointcloud.data.shapenet import ShapeNet
from pointcloud.data.shapenetpart import ShapeNetPart

__all__ = ["DataError", "ModelNet", "ModelNetFewShot", "ScanObjectNN", "ShapeNet", "ShapeNetPart"]

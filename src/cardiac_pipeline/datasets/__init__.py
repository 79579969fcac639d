"""Custom Kedro datasets: EchoNet folders, clip stores, versioned folders of artifacts."""

from cardiac_pipeline.datasets.clip_store import ClipStoreDataset, ClipStoreRequest
from cardiac_pipeline.datasets.echonet_folder import EchoNetFolderDataset, SyntheticRequest
from cardiac_pipeline.datasets.frame_features import FeatureStoreRequest, FrameFeatureStoreDataset
from cardiac_pipeline.datasets.partitioned import (
    VersionedCheckpointFolderDataset,
    VersionedCSVFolderDataset,
)

__all__ = [
    "ClipStoreDataset",
    "ClipStoreRequest",
    "EchoNetFolderDataset",
    "FeatureStoreRequest",
    "FrameFeatureStoreDataset",
    "SyntheticRequest",
    "VersionedCSVFolderDataset",
    "VersionedCheckpointFolderDataset",
]

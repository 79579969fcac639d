"""Custom Kedro datasets: EchoNet folders, clip stores, versioned folders of artifacts."""

from cardiac_pipeline.datasets.clip_store import ClipStoreDataset, FolderDataset
from cardiac_pipeline.datasets.echonet_folder import EchoNetFolderDataset
from cardiac_pipeline.datasets.frame_features import FrameFeatureStoreDataset
from cardiac_pipeline.datasets.partitioned import (
    VersionedCheckpointFolderDataset,
    VersionedCSVFolderDataset,
)

__all__ = [
    "ClipStoreDataset",
    "EchoNetFolderDataset",
    "FolderDataset",
    "FrameFeatureStoreDataset",
    "VersionedCSVFolderDataset",
    "VersionedCheckpointFolderDataset",
]

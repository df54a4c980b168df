"""Small helpers shared by the tests that edit or reorder DICOM files."""

from pathlib import Path


def files_by_height(folder: Path) -> list[Path]:
    """Slices of a series from the top (highest z) down, by header position."""
    import pydicom

    def z(path: Path) -> float:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        return float(ds.ImagePositionPatient[2])
    return sorted(folder.iterdir(), key=z, reverse=True)

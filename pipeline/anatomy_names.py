"""Canonical anatomy structure names shared by every anatomy source.

We use TotalSegmentator v2 class names where TotalSegmentator has the structure,
so its output, the phantom's ground truth and other label maps (e.g. the LIDC
mask in ../shared/data) feed the station builder without translation. Structures
TotalSegmentator lacks (airway branches, pulmonary artery, azygos, body) get
names of our own; the station builder must work without them, using proxies.
"""

# Names as in TotalSegmentator v2 `total`.
LUNG_LOBES = (
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
)
LEFT_LUNG_LOBES = LUNG_LOBES[:2]
RIGHT_LUNG_LOBES = LUNG_LOBES[2:]
VERTEBRAE = tuple(f"vertebrae_T{i}" for i in range(1, 13)) + ("vertebrae_C7",)

# Our own names for structures TotalSegmentator's free tasks do not give.
BODY = "body"
MAIN_BRONCHUS_LEFT = "main_bronchus_left"
MAIN_BRONCHUS_RIGHT = "main_bronchus_right"
BRONCHUS_INTERMEDIUS = "bronchus_intermedius"
PULMONARY_ARTERY = "pulmonary_artery"  # trunk plus left and right main branches
AZYGOS_VEIN = "azygos_vein"
LUNG_LEFT = "lung_left"  # whole lung, when a source has no lobes (classical backend)
LUNG_RIGHT = "lung_right"
DIAPHRAGM = "diaphragm"

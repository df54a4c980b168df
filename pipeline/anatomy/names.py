"""Canonical anatomy structure names and label values shared by every anatomy source.

We use TotalSegmentator v2 class names (and their `total` label values) where
TotalSegmentator has the structure, so its output, the phantom's ground truth and
other label maps (e.g. the LIDC mask in ../shared/data) feed the station builder
without translation. Structures TotalSegmentator lacks (airway branches, the
pulmonary artery, azygos, body, the air of larynx and pharynx, all ribs or all
vertebrae as one object) get names of our own, with values above TotalSegmentator's
1..117; the station builder must work without them, using proxies.
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
TRACHEA = "trachea"
ESOPHAGUS = "esophagus"
HEART = "heart"
AORTA = "aorta"
LIVER = "liver"
STERNUM = "sternum"
CLAVICULA_LEFT = "clavicula_left"
CLAVICULA_RIGHT = "clavicula_right"
THYROID = "thyroid_gland"
SUPERIOR_VENA_CAVA = "superior_vena_cava"
BRACHIOCEPHALIC_VEIN_LEFT = "brachiocephalic_vein_left"
BRACHIOCEPHALIC_VEIN_RIGHT = "brachiocephalic_vein_right"

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
LARYNX_PHARYNX_AIR = "larynx_pharynx_air"  # the air column above the cricoid: not lung, not trachea
# All vertebrae as one structure (classical backend; TotalSegmentator gives vertebrae_T1 ...).
SPINE = "spine"
# All ribs as one structure (classical backend; TotalSegmentator gives rib_left_1 ...).
RIBS = "ribs"
# Derived name: every skeletal label together (vertebrae, ribs, sternum, clavicles, scapulae ...).
BONE = "bone"

# Landmark names (points in LPS mm).
CARINA = "carina"
CRICOID = "cricoid"  # the top of the trachea: the lower edge of the cricoid cartilage
LUNG_APEX_LEFT = "lung_apex_left"
LUNG_APEX_RIGHT = "lung_apex_right"

# Label values of the TotalSegmentator v2 `total` classes that the classical
# backend also produces, so both backends use the same numbers for the same
# structure. (Checked against totalsegmentator.map_to_binary in the tests.)
TS_TOTAL_LABELS: dict[str, int] = {
    LIVER: 5,
    "lung_upper_lobe_left": 10,
    "lung_lower_lobe_left": 11,
    "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13,
    "lung_lower_lobe_right": 14,
    ESOPHAGUS: 15,
    TRACHEA: 16,
    THYROID: 17,
    HEART: 51,
    AORTA: 52,
    BRACHIOCEPHALIC_VEIN_LEFT: 59,
    BRACHIOCEPHALIC_VEIN_RIGHT: 60,
    SUPERIOR_VENA_CAVA: 62,
    CLAVICULA_LEFT: 73,
    CLAVICULA_RIGHT: 74,
    STERNUM: 116,
}

# Label values for structures with our own names (above TotalSegmentator's 1..117).
OWN_LABELS: dict[str, int] = {
    BODY: 200,
    LUNG_LEFT: 201,
    LUNG_RIGHT: 202,
    MAIN_BRONCHUS_LEFT: 203,
    MAIN_BRONCHUS_RIGHT: 204,
    BRONCHUS_INTERMEDIUS: 205,
    SPINE: 206,
    PULMONARY_ARTERY: 207,
    AZYGOS_VEIN: 208,
    "lung_airways": 209,  # airway tree beyond the named bronchi (TotalSegmentator lung_vessels)
    RIBS: 210,
    LARYNX_PHARYNX_AIR: 211,
}

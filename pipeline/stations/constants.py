"""Names and tunable constants of the station builder (every number a rule uses).

Each constant is named where the rule that uses it is described (see the
package docstring of `pipeline.stations`).
"""

from __future__ import annotations

from pipeline.anatomy import names as an

# IASLC 2009 stations, map order (the same names pipeline.staging accepts).
STATIONS: tuple[str, ...] = (
    "1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7",
    "8R", "8L", "9R", "9L", "10R", "10L", "11R", "11L",
    "12R", "12L", "13R", "13L", "14R", "14L",
)
STATION_VALUES: dict[str, int] = {s: i + 1 for i, s in enumerate(STATIONS)}

# --- Tunable constants (every number a rule uses; each is named in the docstring). ---
WORK_SPACING_MM = 2.0
MIN_COMPONENT_MM2 = 20.0        # ignore label specks smaller than this in a slice
MIN_LUMEN_SEPARATION_MM = 8.0   # two airway lumens must lie this far apart (x) to count as a split
ARCH_PART_MIN_MM2 = 100.0       # ascending/descending aorta parts below the arch: at least this big in a slice
STATION1_LATERAL_MM = 70.0
STATION1_ANTERIOR_MM = 30.0     # in front of the anterior tracheal wall (within the trachea's width: sternal notch)
STATION1_LATERAL_ANTERIOR_MM = 5.0  # beside the trachea, from this far in front of its anterior wall (muscle
                                    # proxy: sternocleidomastoid and strap muscles lie further forward)
STATION1_POSTERIOR_MM = 30.0    # behind the posterior tracheal wall (and never behind the vertebral bodies' front)
STATION1_VESSEL_MM = 20.0       # muscle proxy: station 1 is the fat this close to the labelled neck vessels
STATION1_SKIN_DEPTH_MM = 15.0   # muscle proxy: station 1 lies this deep to the skin (platysma, sternomastoid ...)
PREVASCULAR_PROXY_MM = 15.0     # vessel front proxy: this far in front of the trachea
PARA_AORTIC_MM = 15.0           # prevascular space this close to the aorta is station 6
PARATRACHEAL_LEFT_MM = 15.0     # 4L vs 5/6: distance from the airway (ligamentum proxy)
RIGHT_POSTERIOR_MM = 20.0       # paratracheal zones end this far behind the posterior tracheal wall
LEFT_POSTERIOR_MM = 30.0
SUBCARINAL_ANTERIOR_MM = 15.0
SUBCARINAL_POSTERIOR_MM = 40.0
SUBCARINAL_MIN_HALF_WIDTH_MM = 4.0
SUBCARINAL_PROXY_HALF_WIDTH_MM = 15.0  # station-7 column when no bronchus is labelled
HILAR_CORE_MM = 20.0
HILAR_LUNG_MM = 10.0
HILAR_PROXY_LUNG_MM = 15.0
HILAR_PROXY_ANTERIOR_MM = 40.0
HILAR_PROXY_POSTERIOR_MM = 30.0
LIGAMENT_MM = 20.0
LIGAMENT_ANTERIOR_MM = 20.0     # station 9 lies from 20 mm in front of to 30 mm behind the esophagus's centre
LIGAMENT_POSTERIOR_MM = 30.0
LIGAMENT_LATERAL_MM = 60.0      # ... and not more than 60 mm to either side of it
PARAESOPHAGEAL_NEAR_MM = 15.0   # below station 7, this close to the esophageal wall is 8 before anything else
PARAESOPHAGEAL_MM = 25.0
PARAESOPHAGEAL_PROXY_MM = 30.0
ESOPHAGUS_PROXY_RADIUS_MM = 8.0      # stand-in esophagus (no label): a disc this size ...
ESOPHAGUS_PROXY_ANTERIOR_MM = 15.0   # ... centred this far in front of the descending aorta's centre
SPINE_FRONT_WINDOW_MM = 6.0          # the spine's front per column: the most anterior within this in z (discs)
VERTEBRAL_BODY_DEPTH_MM = 25.0       # the vertebral body: spine voxels this close behind its anterior surface
DESCENDING_AORTA_SEARCH_MM = 40.0    # the descending aorta: aorta voxels at most this far in front of the spine
PA_ABOVE_VEINS_MM = 10.0
PA_ABOVE_CARINA_MM = 10.0
PA_PROXY_BELOW_CARINA_MM = 10.0  # a proxy pulmonary-artery rim is never placed lower than this below the carina
BI_BELOW_CARINA_MM = 40.0
LLB_BELOW_CARINA_MM = 35.0
STATION7_MIN_MM = 15.0
STATION7_MAX_MM = 60.0
INTERLOBAR_MM = 5.0
INTERLOBAR_HILUM_MM = 30.0
LOBAR_MM = 20.0
SEGMENTAL_MM = 40.0
DIAPHRAGM_THICKNESS_MM = 4.0    # the diaphragm lies this thick on top of the abdominal organs
DIAPHRAGM_BELOW_HEART_MM = 15.0  # nothing lies this far below the heart's lowest voxel (it rests on the diaphragm)
DIAPHRAGM_INPLANE_MM = 20.0     # the organs' top is carried this far sideways (the dome's slope, the crura)

CONTAINERS = (an.BODY, "mediastinum", "thoracic_cavity")
RIGHT_LUNG_NAMES = an.RIGHT_LUNG_LOBES + (an.LUNG_RIGHT,)
LEFT_LUNG_NAMES = an.LEFT_LUNG_LOBES + (an.LUNG_LEFT,)
AIRWAY_NAMES = ("trachea", an.MAIN_BRONCHUS_RIGHT, an.MAIN_BRONCHUS_LEFT, an.BRONCHUS_INTERMEDIUS)
GREAT_VESSELS = (
    "superior_vena_cava", "brachiocephalic_vein_left", "brachiocephalic_vein_right",
    "brachiocephalic_trunk", "common_carotid_artery_left", "common_carotid_artery_right",
    "subclavian_artery_left", "subclavian_artery_right", "aorta", an.PULMONARY_ARTERY, "heart",
)
# The heart and pulmonary arteries bound the prevascular space only in front of the trachea: the
# PA branches (in some label maps part of "heart") run beside and behind the airway, under the AP window.
HEART_AND_PA = (an.PULMONARY_ARTERY, "heart")
# Labelled vessels whose lumen, on a contrast CT, leads into unlabelled enhanced lumen (cut from the stations).
LUMEN_VESSELS = GREAT_VESSELS + ("pulmonary_vein", "inferior_vena_cava", "atrial_appendage_left", "azygos_vein")
ENHANCED_VESSEL_MIN_ML = 2.0    # an enhanced run this big is a vessel (or bone) even unconnected to a label
ENHANCED_BLOOD_HU = 150.0       # contrast-filled blood; lymph nodes stay well below it even when they enhance
# Vessels of the lower neck and thoracic inlet: the station-1 nodes lie in the fat around them.
NECK_VESSELS = (
    "common_carotid_artery_left", "common_carotid_artery_right", "subclavian_artery_left",
    "subclavian_artery_right", "brachiocephalic_vein_left", "brachiocephalic_vein_right", "brachiocephalic_trunk",
    "internal_jugular_vein_left", "internal_jugular_vein_right",
)
DIAPHRAGM = an.DIAPHRAGM
CRICOID = an.CRICOID                     # anatomy landmark: lower margin of the cricoid cartilage
# Organs below the diaphragm: the top of these, column by column, is the diaphragm (stations 8/9 end there).
ABDOMINAL_ORGANS = (
    "liver", "stomach", "spleen", "gallbladder", "pancreas", "kidney_right", "kidney_left",
    "adrenal_gland_right", "adrenal_gland_left", "duodenum", "colon", "small_bowel",
    "portal_vein_and_splenic_vein",
)

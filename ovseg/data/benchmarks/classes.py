"""Class lists of the zero-shot benchmarks, in label order, with the names OVSegmentor prompts with.

Label order follows mmsegmentation's dataset classes (the order of the converted label PNGs); the
prompt-friendly renames are GroupViT's/OVSegmentor's ``segmentation/datasets/*.py`` overrides
(reference/ovsegmentor.md §7): VOC diningtable->table, pottedplant->plant, tvmonitor->monitor;
Context aeroplane->airplane, pottedplant->plant, tvmonitor->monitor; COCO-Object uses COCO's thing
names; ADE20K keeps mmseg's names (including the trailing space of 'bed ', which the released
prompts carry; the prompt builder may strip it).

Background is not in these lists; the readers prepend it where the protocol has one. The benchmarks added for
the TCL/SCLIP eight-benchmark table (COCO-Stuff-171, Cityscapes) have no GroupViT override and keep
mmsegmentation's names, which TCL prompts with verbatim (``protocol_names`` holds each protocol's names).
Also here: the raw-id tables the converters (``convert``) apply, each with its source.
"""

VOC20_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "table", "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor",
]

# mmseg's PascalContextDataset order (alphabetical: the converter sorts the 59 class ids by name).
CONTEXT59_CLASSES = [
    "airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "plant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table",
    "track", "train", "tree", "truck", "monitor", "wall", "water", "window", "wood",
]

# The 80 COCO thing classes in COCO-Stuff id order (label 1..80 after convert_coco_object).
COCO_OBJECT_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]

# COCO-Stuff raw label ids (0-based) of the 80 thing classes: 0..90 minus 11 ids COCO never used.
_UNUSED_THING_IDS = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
COCO_THING_IDS = [i for i in range(91) if i not in _UNUSED_THING_IDS]

# COCO-Stuff-164k, 171 classes in trainId order: open-mmlab/mmsegmentation mmseg/datasets/coco_stuff.py
# (COCOStuffDataset.CLASSES, the 0.x class TCL's segmentation/configs/_base_/datasets/stuff.py builds).
COCO_STUFF_CLASSES = COCO_OBJECT_CLASSES + [
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]
# Raw COCO-Stuff ids (0-based stuffthingmaps values) in trainId order: the 80 things, then the 91 stuff ids
# 91..181 (mmsegmentation tools/dataset_converters/coco_stuff164k.py, clsID_to_trID; 255 stays 255).
COCO_STUFF_IDS = COCO_THING_IDS + list(range(91, 182))

# Cityscapes, 19 evaluated classes in trainId order: mmsegmentation mmseg/datasets/cityscapes.py
# (CityscapesDataset classes), the names of cityscapesScripts' trainIds 0..18.
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
# labelId -> trainId for ids 0..33, mcordts/cityscapesScripts cityscapesscripts/helpers/labels.py (every other
# id is void: trainId 255). 'license plate' has id -1 and is never drawn into a labelIds PNG.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_NUM_IDS = 34  # label ids 0..33

# PASCAL Context: the 459-class ids of background (0) and the 59 classes, sorted; label k of the converted
# 60-class PNG is the k-th of them (mmsegmentation tools/dataset_converters/pascal_context.py, ``_mapping``,
# which np.sort()s this list; the 459 names are alphabetical, so the 59 come out in CONTEXT59_CLASSES order).
CONTEXT_459_IDS = sorted([
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295,
    296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347,
    220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
])

assert len(VOC20_CLASSES) == 20 and len(CONTEXT59_CLASSES) == 59
assert len(COCO_OBJECT_CLASSES) == 80 == len(COCO_THING_IDS) and len(ADE20K_CLASSES) == 150
assert len(COCO_STUFF_CLASSES) == 171 == len(COCO_STUFF_IDS) and len(CITYSCAPES_CLASSES) == 19
assert len(CONTEXT_459_IDS) == 60 == len(set(CONTEXT_459_IDS))

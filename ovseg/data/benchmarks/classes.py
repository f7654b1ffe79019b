"""Class lists of the zero-shot benchmarks, in label order, with the names OVSegmentor prompts with.

Label order follows mmsegmentation's dataset classes (the order of the converted label PNGs); the
prompt-friendly renames are GroupViT's/OVSegmentor's ``segmentation/datasets/*.py`` overrides
(reference/ovsegmentor.md §7): VOC diningtable->table, pottedplant->plant, tvmonitor->monitor;
Context aeroplane->airplane, pottedplant->plant, tvmonitor->monitor; COCO-Object uses COCO's thing
names; ADE20K keeps mmseg's names (including the trailing space of 'bed ', which the released
prompts carry; the prompt builder may strip it).

Background is not in these lists; the readers prepend it where the protocol has one.
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

assert len(VOC20_CLASSES) == 20 and len(CONTEXT59_CLASSES) == 59
assert len(COCO_OBJECT_CLASSES) == 80 == len(COCO_THING_IDS) and len(ADE20K_CLASSES) == 150

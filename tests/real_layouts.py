"""Writers of the real layouts for tests: TERAN's data/coco and data/f30k trees, written as
mesnico/TERAN's data.py reads them (get_paths, CocoDataset, FlickrDataset, BottomUpFeaturesDataset):

    data/coco/annotations/coco_{train,restval,dev,test}_ids.npy    annotation ids
    data/coco/annotations/captions_{train,val}2014.json            images + annotations
    data/coco/features_36/bu_att/{image_id}.npz ['feat'], bu_box/{image_id}.npy   (pixels)
    data/f30k/annotations/dataset_flickr30k.json                   Karpathy's split file
    data/f30k/images/sizes.pkl                                     pickle of image.size per image
    data/f30k/features_36/bu_att/{i}.npz, bu_box/{i}.npy           i = position in the json
"""

import json
import os
import pickle

import numpy as np

F = 6
rng = np.random.default_rng(0)


def _features(folder, image_id, count, width, height):
    os.makedirs(os.path.join(folder, "bu_att"), exist_ok=True)
    os.makedirs(os.path.join(folder, "bu_box"), exist_ok=True)
    feat = rng.normal(size=(count, F)).astype(np.float32)
    corners = np.sort(rng.uniform(size=(count, 2, 2)), axis=1)
    boxes = np.concatenate([corners[:, 0], corners[:, 1]], 1) * [width, height, width, height]
    np.savez(os.path.join(folder, "bu_att", f"{image_id}.npz"), feat=feat)
    np.save(os.path.join(folder, "bu_box", f"{image_id}.npy"), boxes)
    return feat, boxes / np.tile([width, height], 2)


# image id -> (width, height, region count, number of captions); split -> images.
COCO_IMAGES = {
    "train": {9: (640, 480, 3, 5), 25: (500, 375, 2, 6)},
    "restval": {30: (480, 640, 4, 5)},
    "dev": {41: (640, 427, 2, 5), 42: (427, 640, 3, 5), 43: (500, 500, 2, 5)},
    "test": {71: (640, 480, 2, 5), 72: (333, 500, 5, 6), 73: (612, 612, 3, 5)},
}


def write_coco(root, images=None):
    """TERAN's data/coco with `images` (default COCO_IMAGES); returns {image id: (feat,
    normalised boxes)}."""
    images = COCO_IMAGES if images is None else images
    annotations = os.path.join(root, "annotations")
    os.makedirs(annotations)
    expected, next_id = {}, 1000
    files = {
        "captions_train2014.json": ("train",),
        "captions_val2014.json": ("restval", "dev", "test"),
    }
    for json_name, splits in files.items():
        content = {"images": [], "annotations": []}
        for split in splits:
            ids = []
            for image_id, (width, height, count, sentences) in images[split].items():
                content["images"].append(
                    {
                        "id": image_id,
                        "width": width,
                        "height": height,
                        "file_name": f"COCO_{image_id:012d}.jpg",
                    }
                )
                for k in range(sentences):
                    content["annotations"].append(
                        {
                            "id": next_id,
                            "image_id": image_id,
                            "caption": f"Image {image_id} caption {k}. ",
                        }
                    )
                    ids.append(next_id)
                    next_id += 1
                expected[image_id] = _features(
                    os.path.join(root, "features_36"), image_id, count, width, height
                )
            np.save(os.path.join(annotations, f"coco_{split}_ids.npy"), np.asarray(ids))
        with open(os.path.join(annotations, json_name), "w") as file:
            json.dump(content, file)
    return expected


FLICKR = [
    ("train", (500, 333), 2),
    ("val", (375, 500), 3),
    ("test", (500, 375), 4),
    ("test", (333, 500), 2),
    ("val", (500, 400), 1),
]


def write_f30k(root):
    os.makedirs(os.path.join(root, "annotations"))
    os.makedirs(os.path.join(root, "images"))
    images, sizes, expected = [], [], {}
    for position, (split, size, count) in enumerate(FLICKR):
        images.append(
            {
                "split": split,
                "filename": f"{1000 + position}.jpg",
                "imgid": position,
                "sentences": [
                    {"raw": f" flickr {position} sentence {k}\n", "tokens": []} for k in range(5)
                ],
            }
        )
        sizes.append(size)  # PIL image.size: (width, height)
        expected[position] = _features(os.path.join(root, "features_36"), position, count, *size)
    with open(os.path.join(root, "annotations", "dataset_flickr30k.json"), "w") as file:
        json.dump({"dataset": "flickr30k", "images": images}, file)
    with open(os.path.join(root, "images", "sizes.pkl"), "wb") as file:
        pickle.dump(sizes, file)
    return expected

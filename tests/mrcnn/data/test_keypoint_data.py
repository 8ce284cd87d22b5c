"""Keypoints through the data path: shapes keypoint variant, COCO parsing, shards, flip, collate."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn.data import ShardDataset
from mrcnn.data.coco import ImageRecord, class_map, decode_instances, load_coco_split
from mrcnn.data.loader import collate, hflip_sample
from mrcnn.data.minimask import boxes_from_masks
from mrcnn.data.shapes import KEYPOINT_FLIP_MAP, ShapesSpec, generate_image, write_split
from mrcnn.data.writer import ShardOptions, build_split
from mrcnn.evaluation.coco_eval import coco_evaluate, ground_truth_results

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SPEC = ShapesSpec(num_train=6, num_val=0, keypoints=True, seed=3)


def test_shapes_keypoints_are_corners_and_centres():
    """Unoccluded squares: the corners are the mask's box; unoccluded circles: the centre is the
    box's centre; every instance labels only its own class's keypoint types."""
    checked = {1: 0, 2: 0}
    for i in range(40):
        g = generate_image(ShapesSpec(seed=3), "train", i)
        boxes = boxes_from_masks(g.masks)
        for cat, kp, mask, box in zip(g.category_ids, g.keypoints, g.masks, boxes, strict=True):
            own = {1: [0, 1, 2, 3], 2: [7], 3: [4, 5, 6]}[int(cat)]
            assert np.flatnonzero(kp[:, 2] > 0).tolist() == own
            x1, y1, x2, y2 = box
            # An unoccluded square: its visible pixels fill a square box.
            full = x2 - x1 == y2 - y1 and mask.sum() == (x2 - x1) * (y2 - y1)
            if cat == 1 and full:
                np.testing.assert_array_equal(kp[:4, :2], [[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
                checked[1] += 1
            round_box = x2 - x1 == y2 - y1 and mask.sum() > 0.97 * np.pi * ((x2 - x1) / 2) ** 2
            if cat == 2 and round_box:  # an unoccluded circle
                np.testing.assert_allclose(kp[7, :2], [(x1 + x2) / 2, (y1 + y2) / 2], atol=0.5)
                checked[2] += 1
    assert checked[1] >= 5 and checked[2] >= 5


def test_shapes_keypoint_images_equal_the_plain_ones():
    a, b = generate_image(ShapesSpec(seed=3), "train", 5), generate_image(SPEC, "train", 5)
    np.testing.assert_array_equal(a.image, b.image)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_kp")
    write_split(SPEC, root, "train")
    return root


def test_ground_truth_keypoints_of_shapes_give_ap_1(raw):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(raw / "annotations" / "instances_train.json"))
    ann = gt.loadAnns(gt.getAnnIds())[0]
    assert len(ann["keypoints"]) == 24 and ann["num_keypoints"] in (1, 3, 4)
    assert gt.loadCats(1)[0]["keypoints"][0] == "square_top_left"
    scores = coco_evaluate(gt, ground_truth_results(gt), ["keypoints"], oks_sigmas=[0.05] * 8)
    assert scores.metrics["keypoints"]["AP"] == pytest.approx(1.0, abs=1e-12)


def test_keypoints_survive_shards_flip_and_collate(raw, tmp_path):
    parsed = load_coco_split(raw / "annotations" / "instances_train.json")
    build_split(
        parsed.records,
        raw / "train",
        tmp_path / "train",
        class_map([parsed.categories]),
        ShardOptions(image_size=256, mini_mask_shape=28),  # 128 -> 256: scale 2
        num_workers=1,
    )
    ds = ShardDataset(tmp_path / "train")
    s = ds[0]
    g = generate_image(SPEC, "train", s.image_id - 1)
    assert s.scale == 2.0 and s.keypoints.shape == (len(s.labels), 8, 3)
    expected = g.keypoints * np.float32([2, 2, 1])
    np.testing.assert_allclose(s.keypoints, expected, rtol=1e-6)

    flipped = hflip_sample(s, flip_map=KEYPOINT_FLIP_MAP)
    labelled = expected[..., 2] > 0
    # A square's top-left corner x1 becomes the mirrored top-right corner at 256 - x1.
    sq = int(np.flatnonzero(g.category_ids == 1)[0]) if (g.category_ids == 1).any() else None
    if sq is not None:
        assert flipped.keypoints[sq, 1, 0] == 256 - s.keypoints[sq, 0, 0]
        assert flipped.keypoints[sq, 1, 1] == s.keypoints[sq, 0, 1]
    assert (flipped.keypoints[..., 2] > 0).sum() == labelled.sum()
    twice = hflip_sample(flipped, flip_map=KEYPOINT_FLIP_MAP)
    np.testing.assert_allclose(twice.keypoints, s.keypoints)
    # Flipped keypoints still lie in their flipped boxes (corners on the edges).
    x = flipped.keypoints[..., 0]
    b = flipped.boxes[:, None]
    lab = flipped.keypoints[..., 2] > 0
    assert ((x >= b[..., 0] - 1e-4) & (x <= b[..., 2] + 1e-4) | ~lab).all()

    batch = collate([s, ds[1]], max_gt=5)
    assert batch.gt_keypoints.shape == (2, 5, 8, 3)
    np.testing.assert_allclose(batch.gt_keypoints[0, : len(s.labels)].numpy(), s.keypoints)
    assert (batch.gt_keypoints[0, len(s.labels) :] == 0).all()


def test_coco_keypoints_parse_and_bad_ones_are_skipped():
    square = [[2, 2, 8, 2, 8, 8, 2, 8]]
    record = ImageRecord(
        1,
        "a.png",
        10,
        10,
        [
            {"id": 1, "category_id": 1, "segmentation": square, "keypoints": [3, 4, 2, 0, 0, 0]},
            {"id": 2, "category_id": 1, "segmentation": square},  # none: unlabelled
            {"id": 3, "category_id": 1, "segmentation": square, "keypoints": [1, 2, 2]},
            {"id": 4, "category_id": 1, "segmentation": square, "keypoints": [5, 6, 1, 7, 7, 2]},
        ],
    )
    inst, skips = decode_instances(record, 10, 10)
    assert inst.keypoints.shape == (3, 2, 3)  # K = 2, the length most annotations have
    np.testing.assert_array_equal(inst.keypoints[0], [[3, 4, 2], [0, 0, 0]])
    assert (inst.keypoints[1] == 0).all()
    np.testing.assert_array_equal(inst.keypoints[2], [[5, 6, 1], [7, 7, 2]])
    assert [(s.reason, s.annotation_id) for s in skips] == [("invalid_keypoints", 3)]
    plain = ImageRecord(2, "b.png", 10, 10, [{"id": 5, "category_id": 1, "segmentation": square}])
    assert decode_instances(plain, 10, 10)[0].keypoints is None

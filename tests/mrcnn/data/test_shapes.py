"""The synthetic shapes dataset: deterministic, masks are the visible pixels, valid COCO."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn.data.minimask import boxes_from_masks
from mrcnn.data.shapes import ShapesSpec, generate_image, write_split

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_generation_is_a_pure_function_of_seed_split_index():
    spec = ShapesSpec()
    a, b = generate_image(spec, "train", 17), generate_image(spec, "train", 17)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.category_ids, b.category_ids)
    assert not np.array_equal(a.image, generate_image(spec, "val", 17).image)
    assert not np.array_equal(a.image, generate_image(ShapesSpec(seed=1), "train", 17).image)
    # image i does not depend on how many images the split has
    assert np.array_equal(a.image, generate_image(ShapesSpec(num_train=20), "train", 17).image)


def test_masks_are_the_visible_pixels_of_distinct_shapes():
    spec = ShapesSpec()
    counts = []
    for i in range(60):
        g = generate_image(spec, "train", i)
        n = len(g.category_ids)
        counts.append(n)
        assert spec.min_shapes <= n <= spec.max_shapes
        assert set(g.category_ids.tolist()) <= {1, 2, 3}
        assert g.masks.shape == (n, 128, 128) and g.masks.any(axis=(1, 2)).all()
        assert (g.masks.sum(0) <= 1).all()  # visible pixels belong to one instance
        background = ~g.masks.any(0)
        bg_colour = g.image[background][0]
        assert (g.image[background] == bg_colour).all()
        for m in g.masks:  # every instance is one solid colour, different from the background
            colours = np.unique(g.image[m], axis=0)
            assert len(colours) == 1 and not np.array_equal(colours[0], bg_colour)
        # occluded instances keep >= min_visible of their box area (a loose check: the full
        # shape is not returned, but a visible part this small would fail)
        sides = boxes_from_masks(g.masks)
        assert (sides[:, 2] - sides[:, 0] >= 3).all() and (sides[:, 3] - sides[:, 1] >= 3).all()
    assert len(set(counts)) == 4  # 1..4 shapes all occur


def test_written_split_is_valid_coco_and_reproducible(tmp_path):
    spec = ShapesSpec(num_train=5, num_val=2)
    for out in (tmp_path / "a", tmp_path / "b"):
        write_split(spec, out, "train")
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 6
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    coco = COCO(str(tmp_path / "a" / "annotations" / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["square", "circle", "triangle"]
    for image_id in coco.getImgIds():
        g = generate_image(spec, "train", image_id - 1)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        np.testing.assert_array_equal(masks, g.masks)
        for a, box in zip(anns, boxes_from_masks(g.masks), strict=True):
            assert a["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            assert a["area"] == coco.annToMask(a).sum()

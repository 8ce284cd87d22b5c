"""The slim model of the training tests: `shapes_small` overrides that make a step cost
milliseconds on the tiny 64 px shards (train, sweep and `dvc repro` tests)."""

TINY_MODEL = {
    "backbone": {"width_multiplier": 0.25, "fpn_channels": 16},
    "roi_heads": {
        "batch_size_per_image": 16,
        "box_head_dim": 64,
        "mask_head_channels": 16,
        "mask_head_convs": 1,
    },
}

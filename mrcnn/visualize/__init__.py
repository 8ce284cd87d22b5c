"""Pictures (after matterport's inspect notebooks): every function returns an image (uint8
`[H, W, 3]`) or draws into a matplotlib `Axes` it is given; none calls `plt.show()`.

    instances   detections / ground truth on their image, the mini-mask round trip
    anchors     RPN anchors by label, anchors per pyramid level
    figures     palette, font, Agg figures; class distribution, per-category AP, PR curves
    errors      the error analysis: TIDE's dAP bars, analyze()'s PR breakdown, the confusion
                matrix, ground truth beside detections coloured by error type
    steps       a model step by step (`MaskRCNN.inference_steps`)

All but steps are re-exported here (`mrcnn.visualize.draw_instances`).
"""

from mrcnn.visualize.anchors import (
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    draw_anchors,
    draw_anchors_per_level,
)
from mrcnn.visualize.errors import (
    draw_confusion_matrix,
    draw_error_breakdown,
    draw_error_types,
    draw_pr_breakdown,
)
from mrcnn.visualize.figures import (
    colors,
    drawing_sizes,
    figure_to_array,
    label_font,
    new_figure,
    plot_class_distribution,
    plot_per_category_ap,
    plot_pr_curves,
    zoom,
)
from mrcnn.visualize.instances import draw_instances, draw_mini_mask_round_trip, image_grid

__all__ = [
    "NEGATIVE",
    "NEUTRAL",
    "POSITIVE",
    "colors",
    "draw_anchors",
    "draw_anchors_per_level",
    "draw_confusion_matrix",
    "draw_error_breakdown",
    "draw_error_types",
    "draw_instances",
    "draw_mini_mask_round_trip",
    "draw_pr_breakdown",
    "drawing_sizes",
    "figure_to_array",
    "image_grid",
    "label_font",
    "new_figure",
    "plot_class_distribution",
    "plot_per_category_ap",
    "plot_pr_curves",
    "zoom",
]

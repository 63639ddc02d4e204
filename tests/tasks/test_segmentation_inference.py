"""Whole-image vs sliding-window inference: equal when one window covers the image, and
overlapping windows averaged pixel by pixel."""

from __future__ import annotations

import pytest
import torch

from ctxlit.tasks import SegmentationTask
from ctxlit.tasks.segmentation import sliding_window_logits, window_starts

TINY = {"backbone": "resnet10", "backbone_options": {"width": 8, "output_stride": 8}, "head_channels": 8}


@pytest.mark.parametrize("size, window, stride, starts", [
    (10, 6, 4, [0, 4]),           # the last window ends exactly at the border
    (11, 6, 4, [0, 4, 5]),        # the last one is moved back to end at 11
    (12, 4, 4, [0, 4, 8]),        # no overlap
    (5, 6, 4, [0]),               # the window covers it all
    (6, 6, 2, [0]),
])
def test_window_starts(size, window, stride, starts):
    assert window_starts(size, window, stride) == starts
    assert starts[-1] + min(window, size) == size


def test_sliding_window_equals_whole_image_when_the_window_covers_it():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 24, 40)
    whole = SegmentationTask(3, **TINY).eval()
    sliding = SegmentationTask(3, sliding_window=True, window=(32, 48), stride=(8, 8), **TINY).eval()
    sliding.load_state_dict(whole.state_dict())
    with torch.no_grad():
        expected = whole.predict_logits(images)
        torch.testing.assert_close(sliding.predict_logits(images), expected)
        # A window exactly the image size is the same single crop.
        torch.testing.assert_close(sliding_window_logits(whole, images, 3, (24, 40), (5, 5)), expected)
        # Smaller windows see less context: the dilated network's logits then differ.
        assert not torch.allclose(sliding_window_logits(whole, images, 3, (16, 16), (8, 8)), expected, atol=1e-4)


def local_x(crop: torch.Tensor) -> torch.Tensor:
    """A 'network' whose only logit is each pixel's column inside its crop (0, 1, 2, ...)."""
    n, _, h, w = crop.shape
    return torch.arange(w, dtype=crop.dtype).expand(n, 1, h, w).clone()


def test_overlapping_windows_are_averaged():
    images = torch.zeros(1, 3, 2, 10)
    # Width 10, windows of 6 every 4: [0, 6) and [4, 10); columns 4 and 5 are in both.
    out = sliding_window_logits(local_x, images, 1, (2, 6), (2, 4))[0, 0]
    row = [0, 1, 2, 3, (4 + 0) / 2, (5 + 1) / 2, 2, 3, 4, 5]
    torch.testing.assert_close(out, torch.tensor([row, row]))


def test_windows_put_every_pixel_back_where_it_came_from():
    # An identity "network" (3 logits = the 3 input channels) must give back the input exactly,
    # whatever the windows, including a last window moved back to the border in both directions.
    images = torch.randn(2, 3, 13, 17)
    for window, stride in [((5, 6), (3, 4)), ((13, 17), (1, 1)), ((4, 4), (4, 4)), ((20, 7), (9, 5))]:
        torch.testing.assert_close(sliding_window_logits(lambda x: x * 1.0, images, 3, window, stride), images)


def test_flip_averages_the_mirrored_prediction():
    task = SegmentationTask(2, flip=True, **TINY)
    task.forward = local_x  # instance attribute: predict_logits calls self(...)
    out = task.predict_logits(torch.zeros(1, 3, 1, 5))
    # Column x: x from the image, 4 - x from its mirror image flipped back: mean 2 everywhere.
    torch.testing.assert_close(out, torch.full((1, 1, 1, 5), 2.0))

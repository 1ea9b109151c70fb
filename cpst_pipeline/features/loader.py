"""Parallel decode + resize, one batch ahead of the network, so the backbone never waits on JPEG."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cpst_pipeline.data.images import load_image
from cpst_pipeline.features.preprocess import resize_image


def _decode_and_resize(path: str, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    image = load_image(path)  # grey stays one channel: FeatureExtractor.batch makes it RGB after resizing
    return [resize_image(image, size) for size in sizes]


def iter_resized_batches(
    paths: Sequence[str], sizes: Sequence[tuple[int, int]], batch_size: int, workers: int = 2
) -> Iterator[tuple[list[int], list[list[np.ndarray]]]]:
    """Yield (positions, per-size image lists) batches; decoding (PIL releases the GIL) overlaps compute."""
    batches = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(batch: list[int]):
            return [pool.submit(_decode_and_resize, paths[i], sizes) for i in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            current = pending
            pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
            images = [future.result() for future in current]
            yield batch, [[image[k] for image in images] for k in range(len(sizes))]

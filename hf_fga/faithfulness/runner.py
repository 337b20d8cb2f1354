"""Runs patch-perturbed copies of a batch of images through a model in batches, with a response cache."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .fills import PatchGrid, fill_source, recomputed_scalar_fill

CLEAN = "clean"

# (image index, fill key, packed patch mask): one perturbed input. The clean image is (i, CLEAN, all-False mask).
Request = tuple[int, str, bytes]


class ResponseCache:
    """
    Model outputs keyed by what determines the perturbed input: (image content, fill, patch mask).

    Pass one cache to several calls on the same model and images (e.g. `evaluate_presets`, or
    `evaluate_faithfulness(..., cache=cache)` once per preset) and every perturbed input they have in common is run
    once: always the clean forward; with the same fill, identical masks (the papers preset's deletion curve
    is its Pixel Flipping curve; with a non-`mean` fill both presets share the Pixel Flipping curve, and
    Faithfulness Correlation's first trial shares its subsets when the seed and subset size agree). The `mean`
    fill differs between the two presets (per-channel vs scalar mean), so those inputs are never shared.
    """

    def __init__(self) -> None:
        self._responses: dict[tuple[str, str, bytes], np.ndarray] = {}
        self._model_key: object | None = None

    def __len__(self) -> int:
        return len(self._responses)

    def bind(self, model_key: object) -> None:
        """Tie the cache to one model (and CLIP label set); refuse another, whose responses would differ."""
        if self._model_key is None:
            self._model_key = model_key
        elif self._model_key != model_key:
            raise ValueError(
                "this ResponseCache holds responses of another model or label set: use one cache per model."
            )

    def get(self, key: tuple[str, str, bytes]) -> np.ndarray | None:
        return self._responses.get(key)

    def put(self, key: tuple[str, str, bytes], response: np.ndarray) -> None:
        self._responses[key] = response


class PerturbationRunner:
    """
    Builds patch-perturbed inputs on demand and runs each distinct one once, in batches of `batch_size`.

    Args:
        forward (`Callable[[Tensor], Tensor]`): `pixel_values (b, C, H, W) -> scores (b, num_outputs)` (logits, or
            any per-output score such as SAE feature activations).
        pixel_values (`Tensor` of shape `(B, C, H, W)`): the clean, preprocessed images.
        grid (`PatchGrid`): the model's patch grid.
        image_mean, image_std (`list[float]`): the processor's normalisation (for the `black` and `uniform` fills).
        batch_size (`int`, *optional*, defaults to 64): inputs per forward pass.
        seed (`int`, *optional*, defaults to 0): seeds the `uniform` fill (per image, from the image id).
        image_ids (`list[int]`, *optional*): ids that seed each image's randomness (defaults to 0..B-1); pass
            dataset indices so results do not depend on how a dataset is split into calls.
        targets (`Sequence[int]`, *optional*): the class (output) tracked per image; defaults to the clean argmax.
        blur_sigma (`float`, *optional*): the `blur` fill's Gaussian σ in pixels (defaults to patch_size / 2).
        cache (`ResponseCache`, *optional*): share responses with other runs on the same model.
        model_key (`object`, *optional*): identifies the model for the cache.
        progress (`bool`, *optional*, defaults to `True`): a tqdm bar over batches when there is more than one.
    """

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        pixel_values: Tensor,
        grid: PatchGrid,
        *,
        image_mean: list[float],
        image_std: list[float],
        batch_size: int = 64,
        seed: int = 0,
        image_ids: Sequence[int] | None = None,
        targets: Sequence[int] | None = None,
        blur_sigma: float | None = None,
        cache: ResponseCache | None = None,
        model_key: object | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected a positive integer.")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}; expected a non-negative integer.")
        num_images = pixel_values.shape[0]
        self.image_ids = list(range(num_images)) if image_ids is None else [int(i) for i in image_ids]
        if len(self.image_ids) != num_images:
            raise ValueError(f"image_ids has {len(self.image_ids)} ids for {num_images} images; pass one per image.")
        self.forward, self.pixel_values, self.grid = forward, pixel_values, grid
        self.image_mean, self.image_std = image_mean, image_std
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.blur_sigma = grid.patch_size / 2 if blur_sigma is None else float(blur_sigma)
        self.cache = ResponseCache() if cache is None else cache
        self.cache.bind(model_key if model_key is not None else id(forward))
        self._fingerprints = [
            hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
            + str(image.dtype)
            for image in pixel_values
        ]
        self._fills: dict[str, Tensor] = {}
        self._image_fills: dict[tuple[int, str], Tensor] = {}
        self._empty_mask = np.zeros(grid.num_patches, dtype=bool).tobytes()
        self.num_forwards = 0
        self._targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        if self._targets is not None and self._targets.shape != (num_images,):
            raise ValueError(
                f"targets has shape {self._targets.shape}; expected one class index per image ({num_images},)."
            )

    @property
    def num_images(self) -> int:
        return self.pixel_values.shape[0]

    def fill_key(self, fill: str, mean_fill: str = "per_channel") -> str:
        """The key of a whole-batch fill (`"mean"`, `"zero"`, ...), its source images built on first use."""
        if fill == "mean":
            key = f"mean:{mean_fill}"
        elif fill == "black":
            key = f"black:{self.image_mean}:{self.image_std}"
        elif fill == "blur":
            key = f"blur:{self.blur_sigma}"
        elif fill == "uniform":
            key = f"uniform:{self.seed}:{self.image_mean}:{self.image_std}"
        else:
            key = fill
        if key not in self._fills:
            self._fills[key] = fill_source(
                self.pixel_values,
                fill,
                mean_fill=mean_fill,
                image_mean=self.image_mean,
                image_std=self.image_std,
                seed=self.seed,
                image_ids=self.image_ids,
                blur_sigma=self.blur_sigma,
            )
        return key

    def recomputed_mean_key(self, image: int, order: np.ndarray) -> str:
        """The key of the thesis code's recomputed-scalar-mean fill for one image and flipping order."""
        key = "mean:scalar_recomputed:" + hashlib.blake2b(order.astype(np.int64).tobytes(), digest_size=16).hexdigest()
        if (image, key) not in self._image_fills:
            self._image_fills[(image, key)] = recomputed_scalar_fill(self.pixel_values[image], order, self.grid)
        return key

    def request(self, image: int, fill: str, mask: np.ndarray) -> Request:
        """The request for image `image` with the patches where `mask (N,)` is True taken from fill `fill`."""
        packed = np.ascontiguousarray(mask, dtype=bool).tobytes()
        return (image, CLEAN, packed) if packed == self._empty_mask else (image, fill, packed)

    def clean_requests(self) -> list[Request]:
        return [(i, CLEAN, self._empty_mask) for i in range(self.num_images)]

    def _key(self, request: Request) -> tuple[str, str, bytes]:
        image, fill, mask = request
        if fill.startswith("uniform:"):
            fill = f"{fill}:{self.image_ids[image]}"
        return self._fingerprints[image], fill, mask

    def _materialise(self, requests: list[Request]) -> Tensor:
        images = torch.tensor([r[0] for r in requests], device=self.pixel_values.device)
        clean = self.pixel_values[images]
        keys = {fill for _, fill, _ in requests} - {CLEAN}
        if not keys:
            return clean
        key = next(iter(keys))
        if len(keys) == 1 and key in self._fills:
            source = self._fills[key]
            fills = source[images] if source.shape[0] > 1 else source
        else:
            fills = clean.clone()
            for j, (image, fill, _) in enumerate(requests):
                if fill != CLEAN:
                    source = self._image_fills.get((image, fill))
                    if source is None:
                        source = self._fills[fill][image if len(self._fills[fill]) > 1 else 0]
                    fills[j] = source
        # Select at patch level: (R, C, h, p, w, p) against a (R, 1, h, 1, w, 1) mask, with no pixel-size mask.
        rows, channels, p = len(requests), clean.shape[1], self.grid.patch_size
        h, w = self.grid.height, self.grid.width
        masks = np.stack([np.frombuffer(r[2], dtype=bool) for r in requests]).reshape(rows, 1, h, 1, w, 1)
        mask = torch.from_numpy(masks).to(clean.device)
        fills = fills.reshape(fills.shape[0], fills.shape[1], *((h, p, w, p) if fills.shape[-1] > 1 else (1,) * 4))
        out = torch.where(mask, fills, clean.reshape(rows, channels, h, p, w, p))
        return out.reshape(rows, channels, h * p, w * p)

    def prefetch(self, requests: Sequence[Request]) -> None:
        """Run every request whose response is not cached yet, each distinct input once, in batches."""
        pending: dict[tuple[str, str, bytes], Request] = {}
        for request in requests:
            key = self._key(request)
            if key not in pending and self.cache.get(key) is None:
                pending[key] = request
        keys, todo = list(pending), list(pending.values())
        starts = range(0, len(todo), self.batch_size)
        bar = tqdm(starts, desc="faithfulness forwards", unit="batch", disable=not self.progress or len(starts) <= 1)
        with torch.inference_mode():
            for start in bar:
                chunk = todo[start : start + self.batch_size]
                scores = self.forward(self._materialise(chunk)).detach().to(torch.float64).cpu().numpy()
                self._check_scores(scores, chunk)
                self.num_forwards += len(chunk)
                for key, score in zip(keys[start : start + self.batch_size], scores, strict=True):
                    self.cache.put(key, score)

    def _check_scores(self, scores: np.ndarray, requests: list[Request]) -> None:
        """A ValueError naming the images (and inputs) on which the model returned NaN or infinite scores."""
        finite = np.isfinite(scores).reshape(len(requests), -1).all(axis=1)
        if finite.all():
            return
        bad = [requests[j] for j in np.flatnonzero(~finite)]
        images = sorted({image for image, fill, _ in bad if fill == CLEAN})
        inputs = "the clean image"
        if not images:
            images, inputs = sorted({image for image, _, _ in bad}), f"perturbed copies ({bad[0][1]} fill)"
        raise ValueError(
            f"The model returned NaN or infinite scores for {inputs} of image(s) {images}, whose pixel_values are "
            "finite: the model itself produces them (check its weights and dtype, e.g. float16 overflow)."
        )

    def responses(self, requests: Sequence[Request]) -> np.ndarray:
        """The model scores `(R, num_outputs)` (float64) of the requests, running those not cached."""
        self.prefetch(requests)
        return np.stack([self.cache.get(self._key(request)) for request in requests])

    def clean_scores(self) -> np.ndarray:
        """The scores `(B, num_outputs)` of the clean images."""
        return self.responses(self.clean_requests())

    def targets(self) -> np.ndarray:
        """The tracked output per image `(B,)`: the given targets, else the class predicted on the clean image (Ŷ)."""
        if self._targets is not None:
            return self._targets
        return self.clean_scores().argmax(axis=1)

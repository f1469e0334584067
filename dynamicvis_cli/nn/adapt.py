"""Adapting pretrained weights to other inputs, at load time, in named and tested functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def adapt_input_conv(
    weight: Tensor, in_chans: int, *, rgb_bands: Sequence[int] | None = None
) -> Tensor:
    """Turn an RGB patch-merger kernel (out, 3, k, k) into one for ``in_chans`` bands.

    Rules (the response to a grey image, or to N copies of it, is preserved where possible):

    * ``rgb_bands`` given (0-based positions of red, green, blue among the N bands, e.g. (3, 2, 1)
      for Sentinel-2 B4/B3/B2): the RGB kernels go to those bands and every other band starts
      at zero, so the model initially sees exactly the RGB image and finetuning learns the rest;
    * 1 band (SAR, panchromatic): the sum of the RGB kernels;
    * 2 bands or more (N ≠ 3): the RGB kernels repeated cyclically over the N bands (R, G, B, R,
      …) and scaled by 3/N (timm's rule), then, when N is not a multiple of 3, all shifted by
      the same kernel so that they sum to the RGB sum: an input whose bands all hold the same
      image gives exactly the response of that image in RGB;
    * 3 bands: unchanged.

    Returns a new tensor (out, in_chans, k, k) in the weight's dtype.
    """
    out_ch, src, kh, kw = weight.shape
    if src != 3:
        raise ValueError(f"input adaptation expects a 3-band (RGB) kernel, got {src} bands")
    if in_chans < 1:
        raise ValueError(f"in_chans must be at least 1, got {in_chans}")
    if rgb_bands is not None:
        if len(rgb_bands) != 3 or len(set(rgb_bands)) != 3:
            raise ValueError(f"rgb_bands needs three distinct band positions, got {list(rgb_bands)}")
        if min(rgb_bands) < 0 or max(rgb_bands) >= in_chans:
            raise ValueError(f"rgb_bands {list(rgb_bands)} out of range for {in_chans} bands")
        new = weight.new_zeros(out_ch, in_chans, kh, kw)
        for src_idx, band in enumerate(rgb_bands):
            new[:, band] = weight[:, src_idx]
        return new
    if in_chans == 3:
        return weight.clone()
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_chans) % 3
    new = weight[:, idx] * (3.0 / in_chans)
    shortfall = weight.sum(dim=1, keepdim=True) - new.sum(dim=1, keepdim=True)
    return new + shortfall / in_chans

"""What every detector checks on the images it is given, before its first layer."""

from torch import Tensor

__all__ = ["check_images"]


def check_images(images: Tensor, multiple: int = 32) -> None:
    """Raise a ``ValueError`` unless ``images`` is a batch (B, 3, H, W) with H and W
    multiples of ``multiple`` (the largest stride whose maps must tile the image)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2] % multiple or images.shape[-1] % multiple:
        raise ValueError(
            f"image height and width must be multiples of {multiple}, got "
            f"{tuple(images.shape[-2:])}"
        )

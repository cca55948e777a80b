"""The built-in guest image (kernel + busybox initramfs); see ``nonstop.image.build``.

``ensure_image()`` returns its ``ImagePaths(kernel, initrd)``, building it once per machine.
"""

from nonstop.image.build import DEFAULT_CACHE, ImageBuildError, ImagePaths, ensure_image

__all__ = ["DEFAULT_CACHE", "ImageBuildError", "ImagePaths", "ensure_image"]
